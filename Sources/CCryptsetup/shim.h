#include <libcryptsetup.h>
#include <stdint.h>

// Macros Swift cannot import (they expand through UINT32_C or casts) restated as constants.

/// Skip libcryptsetup's PBKDF benchmark: the profile fixes the iteration count.
static const uint32_t SEVIMAGE_CRYPT_PBKDF_NO_BENCHMARK = CRYPT_PBKDF_NO_BENCHMARK;
/// Re-encryption flags used for offline encryption of a plain file.
static const uint32_t SEVIMAGE_CRYPT_REENCRYPT_INITIALIZE_ONLY = CRYPT_REENCRYPT_INITIALIZE_ONLY;
static const uint32_t SEVIMAGE_CRYPT_REENCRYPT_MOVE_FIRST_SEGMENT = CRYPT_REENCRYPT_MOVE_FIRST_SEGMENT;
static const uint32_t SEVIMAGE_CRYPT_REENCRYPT_RESUME_ONLY = CRYPT_REENCRYPT_RESUME_ONLY;
static const uint32_t SEVIMAGE_CRYPT_VOLUME_KEY_NO_SEGMENT = CRYPT_VOLUME_KEY_NO_SEGMENT;
static const uint32_t SEVIMAGE_CRYPT_VOLUME_KEY_SET = CRYPT_VOLUME_KEY_SET;
static const uint32_t SEVIMAGE_CRYPT_ACTIVATE_READONLY = CRYPT_ACTIVATE_READONLY;
