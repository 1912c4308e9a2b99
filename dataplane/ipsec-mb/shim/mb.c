/* The C side of natt-ipsec-mb: intel-ipsec-mb's AES-GCM direct API is a set of macros
 * over function pointers in IMB_MGR; these functions make it callable from Rust with a
 * fixed signature. One manager, made once and only read afterwards, serves every thread:
 * the GCM functions keep all their state in the context on this stack. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <intel-ipsec-mb.h>

static IMB_MGR *mgr;

/* 0 on success, else the library's error number; the architecture picked in *arch. */
int natt_mb_init(int *arch)
{
	IMB_ARCH a = IMB_ARCH_NONE;
	if (mgr != NULL) {
		*arch = (int)mgr->used_arch;
		return 0;
	}
	IMB_MGR *m = alloc_mb_mgr(0);
	if (m == NULL)
		return imb_get_errno(NULL) ? imb_get_errno(NULL) : -1;
	init_mb_mgr_auto(m, &a);
	int err = imb_get_errno(m);
	if (err != 0 || a == IMB_ARCH_NONE) {
		free_mb_mgr(m);
		return err ? err : -1;
	}
	mgr = m;
	*arch = (int)a;
	return 0;
}

size_t natt_mb_key_data_size(void)
{
	return sizeof(struct gcm_key_data);
}

/* The bytes of struct gcm_key_data the library has fields in (1008 in 1.3; the rest of
 * its 1024 is alignment padding, which the Rust side uses for the key length). */
size_t natt_mb_key_data_used(void)
{
	return offsetof(struct gcm_key_data, ghash_keys) + sizeof(((struct gcm_key_data *)0)->ghash_keys);
}

const char *natt_mb_version(void)
{
	return imb_get_version_str();
}

/* Expand a 16- or 32-byte key into `kd` (natt_mb_key_data_size() bytes, 64-aligned). */
int natt_mb_gcm_pre(const uint8_t *key, size_t key_len, void *kd)
{
	if (key_len == 16)
		IMB_AES128_GCM_PRE(mgr, key, (struct gcm_key_data *)kd);
	else if (key_len == 32)
		IMB_AES256_GCM_PRE(mgr, key, (struct gcm_key_data *)kd);
	else
		return -1;
	return 0;
}

/* Encrypt `len` bytes in place and write the 16-byte tag. */
void natt_mb_gcm_seal(size_t key_len, const void *kd, const uint8_t iv[12], const uint8_t *aad,
		      uint64_t aad_len, uint8_t *data, uint64_t len, uint8_t tag[16])
{
	struct gcm_context_data ctx;
	if (key_len == 16)
		IMB_AES128_GCM_ENC(mgr, (const struct gcm_key_data *)kd, &ctx, data, data, len, iv, aad,
				   aad_len, tag, 16);
	else
		IMB_AES256_GCM_ENC(mgr, (const struct gcm_key_data *)kd, &ctx, data, data, len, iv, aad,
				   aad_len, tag, 16);
}

/* Decrypt `len` bytes in place; 0 if `tag` verifies (compared in constant time). */
int natt_mb_gcm_open(size_t key_len, const void *kd, const uint8_t iv[12], const uint8_t *aad,
		     uint64_t aad_len, uint8_t *data, uint64_t len, const uint8_t tag[16])
{
	struct gcm_context_data ctx;
	uint8_t t[16];
	if (key_len == 16)
		IMB_AES128_GCM_DEC(mgr, (const struct gcm_key_data *)kd, &ctx, data, data, len, iv, aad,
				   aad_len, t, 16);
	else
		IMB_AES256_GCM_DEC(mgr, (const struct gcm_key_data *)kd, &ctx, data, data, len, iv, aad,
				   aad_len, t, 16);
	/* Constant time: two 64-bit XORs, no branch on the data until the one answer. (A
	 * volatile byte accumulator, the usual idiom, costs 16 dependent stores and loads:
	 * about 90 cycles a packet.) The empty asm keeps the compiler from turning this
	 * into an early-exit compare. */
	uint64_t a0, a1, b0, b1;
	memcpy(&a0, t, 8);
	memcpy(&a1, t + 8, 8);
	memcpy(&b0, tag, 8);
	memcpy(&b1, tag + 8, 8);
	uint64_t diff = (a0 ^ b0) | (a1 ^ b1);
	__asm__("" : "+r"(diff));
	return diff != 0;
}
