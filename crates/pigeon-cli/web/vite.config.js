// Built by crates/pigeon-cli/build.rs into Cargo's OUT_DIR and embedded in the binary.
// Fixed file names (no hashes: the binary is the cache key), no inline script (the page's
// Content-Security-Policy allows scripts from the server only), nothing inlined as data.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: process.env.PIGEON_WEB_OUT || "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: false,
    rollupOptions: {
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "[name].js",
        assetFileNames: "[name][extname]",
      },
    },
  },
});
