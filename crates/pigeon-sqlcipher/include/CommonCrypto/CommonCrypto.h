/*
 * Pigeonpost: the part of Apple's CommonCrypto interface that SQLCipher's CommonCrypto provider
 * (`crypto_cc.c`, selected with -DSQLCIPHER_CRYPTO_CC) calls, implemented over a table of
 * function pointers that the `pigeon-sqlcipher` crate fills with RustCrypto implementations.
 *
 * Why: SQLCipher's OpenSSL provider needs an OpenSSL (or BoringSSL) libcrypto linked into the
 * same binary, and the `tls` transport links BoringSSL, whose symbols clash with OpenSSL's. With
 * this header SQLCipher needs no C crypto library at all.
 *
 * Only the SQLCipher amalgamation includes this header, so the table below is defined once.
 * Until the table is filled (`pigeon_sqlcipher::install`), every function fails: SQLCipher then
 * refuses to derive a key or encrypt a page, never runs without cryptography.
 */
#ifndef PIGEON_COMMONCRYPTO_H
#define PIGEON_COMMONCRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct pigeon_sqlcipher_crypto {
  /* Fills out[0..len] with random bytes; 0 on success. */
  int (*random)(uint8_t *out, size_t len);
  /* HMAC(alg, key, in1 || in2) into out (the digest's length); 0 on success. */
  int (*hmac)(uint32_t alg, const uint8_t *key, size_t key_len, const uint8_t *in1,
              size_t in1_len, const uint8_t *in2, size_t in2_len, uint8_t *out);
  /* PBKDF2 with HMAC(prf); 0 on success. */
  int (*pbkdf2)(uint32_t prf, const uint8_t *pass, size_t pass_len, const uint8_t *salt,
                size_t salt_len, uint32_t rounds, uint8_t *out, size_t out_len);
  /* AES-256-CBC without padding over len bytes (a multiple of 16); 0 on success. */
  int (*aes256_cbc)(int encrypt, const uint8_t *key, const uint8_t *iv, const uint8_t *in,
                    size_t len, uint8_t *out);
} pigeon_sqlcipher_crypto_t;

pigeon_sqlcipher_crypto_t pigeon_sqlcipher_crypto;

typedef int32_t CCCryptorStatus;
#define kCCSuccess 0
#define kCCParamError (-4300)
#define kCCUnimplemented (-4305)

/* HMAC */
typedef uint32_t CCHmacAlgorithm;
#define kCCHmacAlgSHA1 0u
#define kCCHmacAlgSHA256 2u
#define kCCHmacAlgSHA512 4u
#define CC_SHA1_DIGEST_LENGTH 20
#define CC_SHA256_DIGEST_LENGTH 32
#define CC_SHA512_DIGEST_LENGTH 64

/* SQLCipher hands HMAC at most two pieces of input; they are kept by reference until Final. */
typedef struct {
  CCHmacAlgorithm alg;
  const void *key;
  size_t key_len;
  const void *in[2];
  size_t in_len[2];
  int parts;
} CCHmacContext;

static void CCHmacInit(CCHmacContext *ctx, CCHmacAlgorithm alg, const void *key, size_t key_len) {
  memset(ctx, 0, sizeof *ctx);
  ctx->alg = alg;
  ctx->key = key;
  ctx->key_len = key_len;
}

static void CCHmacUpdate(CCHmacContext *ctx, const void *data, size_t len) {
  if (ctx->parts < 2) {
    ctx->in[ctx->parts] = data;
    ctx->in_len[ctx->parts] = len;
  }
  /* A third piece makes Final fail. */
  ctx->parts++;
}

static void CCHmacFinal(CCHmacContext *ctx, void *out) {
  size_t out_len = ctx->alg == kCCHmacAlgSHA512   ? CC_SHA512_DIGEST_LENGTH
                   : ctx->alg == kCCHmacAlgSHA256 ? CC_SHA256_DIGEST_LENGTH
                                                  : CC_SHA1_DIGEST_LENGTH;
  if (ctx->parts > 2 || pigeon_sqlcipher_crypto.hmac == NULL ||
      pigeon_sqlcipher_crypto.hmac(ctx->alg, ctx->key, ctx->key_len, ctx->in[0], ctx->in_len[0],
                                   ctx->in[1], ctx->in_len[1], out) != 0) {
    /* CommonCrypto's Final cannot fail; an all-zero tag never verifies a page. */
    memset(out, 0, out_len);
  }
  memset(ctx, 0, sizeof *ctx);
}

/* PBKDF2 */
typedef uint32_t CCPseudoRandomAlgorithm;
typedef uint32_t CCPBKDFAlgorithm;
#define kCCPBKDF2 2u
#define kCCPRFHmacAlgSHA1 1u
#define kCCPRFHmacAlgSHA256 3u
#define kCCPRFHmacAlgSHA512 5u

static int CCKeyDerivationPBKDF(CCPBKDFAlgorithm algorithm, const char *password,
                                size_t password_len, const uint8_t *salt, size_t salt_len,
                                CCPseudoRandomAlgorithm prf, unsigned rounds, uint8_t *derived,
                                size_t derived_len) {
  if (algorithm != kCCPBKDF2 || pigeon_sqlcipher_crypto.pbkdf2 == NULL) return kCCUnimplemented;
  return pigeon_sqlcipher_crypto.pbkdf2(prf, (const uint8_t *)password, password_len, salt,
                                        salt_len, rounds, derived, derived_len) == 0
             ? kCCSuccess
             : kCCParamError;
}

/* AES-256-CBC, no padding: all SQLCipher asks of a cryptor. */
typedef uint32_t CCOperation;
typedef uint32_t CCAlgorithm;
typedef uint32_t CCOptions;
#define kCCEncrypt 0u
#define kCCDecrypt 1u
#define kCCAlgorithmAES128 0u
#define kCCKeySizeAES256 32
#define kCCBlockSizeAES128 16

typedef struct {
  CCOperation op;
  uint8_t key[kCCKeySizeAES256];
  uint8_t iv[kCCBlockSizeAES128];
} pigeon_cryptor;
typedef pigeon_cryptor *CCCryptorRef;

static void pigeon_wipe(void *p, size_t n) {
  volatile uint8_t *b = (volatile uint8_t *)p;
  while (n--) *b++ = 0;
}

static CCCryptorStatus CCCryptorCreate(CCOperation op, CCAlgorithm alg, CCOptions options,
                                       const void *key, size_t key_len, const void *iv,
                                       CCCryptorRef *out) {
  pigeon_cryptor *c;
  *out = NULL;
  if (alg != kCCAlgorithmAES128 || options != 0 || key_len != kCCKeySizeAES256 || iv == NULL ||
      (op != kCCEncrypt && op != kCCDecrypt))
    return kCCParamError;
  c = (pigeon_cryptor *)malloc(sizeof *c);
  if (c == NULL) return kCCParamError;
  c->op = op;
  memcpy(c->key, key, sizeof c->key);
  memcpy(c->iv, iv, sizeof c->iv);
  *out = c;
  return kCCSuccess;
}

static CCCryptorStatus CCCryptorUpdate(CCCryptorRef c, const void *in, size_t in_len, void *out,
                                       size_t out_avail, size_t *moved) {
  *moved = 0;
  if (c == NULL || in_len % kCCBlockSizeAES128 != 0 || out_avail < in_len ||
      pigeon_sqlcipher_crypto.aes256_cbc == NULL)
    return kCCParamError;
  if (pigeon_sqlcipher_crypto.aes256_cbc(c->op == kCCEncrypt, c->key, c->iv, (const uint8_t *)in,
                                         in_len, (uint8_t *)out) != 0)
    return kCCParamError;
  *moved = in_len;
  return kCCSuccess;
}

static CCCryptorStatus CCCryptorFinal(CCCryptorRef c, void *out, size_t out_avail, size_t *moved) {
  (void)c;
  (void)out;
  (void)out_avail;
  *moved = 0;
  return kCCSuccess;
}

static CCCryptorStatus CCCryptorRelease(CCCryptorRef c) {
  if (c != NULL) {
    pigeon_wipe(c, sizeof *c);
    free(c);
  }
  return kCCSuccess;
}

#endif
