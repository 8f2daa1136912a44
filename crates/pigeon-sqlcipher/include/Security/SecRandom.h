/*
 * Pigeonpost: SecRandomCopyBytes for SQLCipher's CommonCrypto provider, over the table that
 * `pigeon-sqlcipher` fills (see CommonCrypto/CommonCrypto.h).
 */
#ifndef PIGEON_SECRANDOM_H
#define PIGEON_SECRANDOM_H

#include <CommonCrypto/CommonCrypto.h>

typedef const void *SecRandomRef;
#define kSecRandomDefault ((SecRandomRef)NULL)

static int SecRandomCopyBytes(SecRandomRef rnd, size_t count, void *bytes) {
  (void)rnd;
  if (pigeon_sqlcipher_crypto.random == NULL) return -1;
  return pigeon_sqlcipher_crypto.random((uint8_t *)bytes, count) == 0 ? 0 : -1;
}

#endif
