/*
 * Pigeonpost: SQLCipher's CommonCrypto provider includes this header, but uses CoreFoundation
 * only to report Apple's library version (under TARGET_OS_MAC, which is not defined here).
 */
#ifndef PIGEON_COREFOUNDATION_H
#define PIGEON_COREFOUNDATION_H
#endif
