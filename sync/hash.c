/*
 * hash — XXH3-128 of whole files, of their 4 MiB chunks and 64 KiB blocks, in one pass.
 *
 * hash_fd keeps XXH3 streaming states for the whole file, the chunk being read and (when block
 * hashes are asked for) the block being read. Reads go through one heap buffer of HASH_READ_SIZE
 * bytes and never cross a chunk boundary (HASH_CHUNK_SIZE is a multiple of the buffer size and
 * every read is clipped to the end of the current chunk), so a short read only makes the next read
 * smaller and the chunk state can be finished and reset exactly at each 4 MiB mark. The size is
 * what was read up to EOF, so it always agrees with the number of chunks even if the file changes
 * under us; the caller compares dev/ino/ctime to notice that.
 *
 * Text form: "xxh3-128:" then the canonical (big-endian, high 64 bits first) digest in 32
 * lowercase hex digits, which is exactly what `xxhsum -H2` prints. Only lowercase is parsed
 * back, so one hash has one spelling and strings compare like hashes.
 */
#include "sync/hash.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define HASH_PREFIX "xxh3-128:"
#define HASH_PREFIX_LEN (sizeof(HASH_PREFIX) - 1)
#define HASH_READ_SIZE ((size_t)1 << 20)

_Static_assert(HASH_CHUNK_SIZE % HASH_READ_SIZE == 0, "reads must not straddle chunks");
_Static_assert(HASH_CHUNK_SIZE % HASH_BLOCK_SIZE == 0, "blocks must not straddle chunks");
_Static_assert(HASH_STR_LEN == HASH_PREFIX_LEN + 32 + 1, "HASH_STR_LEN mismatch");

static struct hash128 from_xxh(XXH128_hash_t h)
{
	return (struct hash128){ .hi = h.high64, .lo = h.low64 };
}

struct hash128 hash_buf(const void *buf, size_t len)
{
	return from_xxh(XXH3_128bits(buf, len));
}

/* Appends @h to the growing chunk array. 0 or -ENOMEM. */
static int push_chunk(struct hash128 **arr, size_t *n, size_t *cap, struct hash128 h)
{
	if (*n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct hash128 *bigger = realloc(*arr, ncap * sizeof(**arr));

		if (!bigger)
			return -ENOMEM;
		*arr = bigger;
		*cap = ncap;
	}
	(*arr)[(*n)++] = h;
	return 0;
}

/* Feeds @len bytes to the block state, pushing a block hash at each HASH_BLOCK_SIZE mark of
 * the file (@off is the offset of @buf). 0 or -ENOMEM. */
static int update_blocks(XXH3_state_t *blk, const uint8_t *buf, size_t len, uint64_t off,
			 struct hash128 **arr, size_t *n, size_t *cap)
{
	while (len > 0) {
		size_t take = (size_t)(HASH_BLOCK_SIZE - off % HASH_BLOCK_SIZE);
		int ret;

		if (take > len)
			take = len;
		XXH3_128bits_update(blk, buf, take);
		buf += take;
		len -= take;
		off += take;
		if (off % HASH_BLOCK_SIZE != 0)
			continue;
		ret = push_chunk(arr, n, cap, from_xxh(XXH3_128bits_digest(blk)));
		if (ret)
			return ret;
		XXH3_128bits_reset(blk);
	}
	return 0;
}

int hash_fd(int fd, struct hash128 *whole, uint64_t *size, struct hash128 **chunks,
	    size_t *n_chunks)
{
	return hash_fd_blocks(fd, whole, size, chunks, n_chunks, NULL, NULL);
}

int hash_fd_blocks(int fd, struct hash128 *whole, uint64_t *size, struct hash128 **chunks,
		   size_t *n_chunks, struct hash128 **blocks, size_t *n_blocks)
{
	XXH3_state_t *all = NULL, *part = NULL, *blk = NULL;
	struct hash128 *arr = NULL, *barr = NULL;
	size_t n = 0, cap = 0, nb = 0, bcap = 0;
	uint64_t off = 0;
	uint8_t *buf;
	int ret = 0;

	buf = malloc(HASH_READ_SIZE);
	all = XXH3_createState();
	if (chunks)
		part = XXH3_createState();
	if (blocks)
		blk = XXH3_createState();
	if (!buf || !all || (chunks && !part) || (blocks && !blk)) {
		ret = -ENOMEM;
		goto out;
	}
	XXH3_128bits_reset(all);
	if (part)
		XXH3_128bits_reset(part);
	if (blk)
		XXH3_128bits_reset(blk);

	for (;;) {
		uint64_t left_in_chunk = HASH_CHUNK_SIZE - off % HASH_CHUNK_SIZE;
		size_t want = left_in_chunk < HASH_READ_SIZE ? (size_t)left_in_chunk
							      : HASH_READ_SIZE;
		ssize_t got = pread(fd, buf, want, (off_t)off);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			goto out;
		}
		if (got == 0)
			break;
		XXH3_128bits_update(all, buf, (size_t)got);
		if (blk) {
			ret = update_blocks(blk, buf, (size_t)got, off, &barr, &nb, &bcap);
			if (ret)
				goto out;
		}
		off += (uint64_t)got;
		if (!part)
			continue;
		XXH3_128bits_update(part, buf, (size_t)got);
		if (off % HASH_CHUNK_SIZE == 0) {
			ret = push_chunk(&arr, &n, &cap, from_xxh(XXH3_128bits_digest(part)));
			if (ret)
				goto out;
			XXH3_128bits_reset(part);
		}
	}
	/* The tail chunk and block; an empty file has none at all. */
	if (part && off % HASH_CHUNK_SIZE != 0) {
		ret = push_chunk(&arr, &n, &cap, from_xxh(XXH3_128bits_digest(part)));
		if (ret)
			goto out;
	}
	if (blk && off % HASH_BLOCK_SIZE != 0) {
		ret = push_chunk(&barr, &nb, &bcap, from_xxh(XXH3_128bits_digest(blk)));
		if (ret)
			goto out;
	}

	*whole = from_xxh(XXH3_128bits_digest(all));
	*size = off;
	if (chunks) {
		*chunks = arr;
		arr = NULL;
		if (n_chunks)
			*n_chunks = n;
	}
	if (blocks) {
		*blocks = barr;
		barr = NULL;
		if (n_blocks)
			*n_blocks = nb;
	}
out:
	free(arr);
	free(barr);
	XXH3_freeState(blk);
	XXH3_freeState(part);
	XXH3_freeState(all);
	free(buf);
	return ret;
}

void hash_format(const struct hash128 *h, char out[HASH_STR_LEN])
{
	snprintf(out, HASH_STR_LEN, HASH_PREFIX "%016" PRIx64 "%016" PRIx64, h->hi, h->lo);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int hash_parse(const char *s, struct hash128 *out)
{
	uint64_t words[2] = { 0, 0 };
	int ret = -EINVAL;

	if (!s || strncmp(s, HASH_PREFIX, HASH_PREFIX_LEN) != 0)
		goto out;
	s += HASH_PREFIX_LEN;
	for (int i = 0; i < 32; i++) {
		int d = hex_digit(s[i]);

		if (d < 0)
			goto out; /* also stops at the NUL of a short string */
		words[i / 16] = words[i / 16] << 4 | (uint64_t)d;
	}
	if (s[32] != '\0')
		goto out;
	out->hi = words[0];
	out->lo = words[1];
	ret = 0;
out:
	return ret;
}

bool hash_equal(const struct hash128 *a, const struct hash128 *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

void hash_to_bytes(const struct hash128 *h, uint8_t out[16])
{
	for (int i = 0; i < 8; i++) {
		out[i] = (uint8_t)(h->hi >> (56 - 8 * i));
		out[8 + i] = (uint8_t)(h->lo >> (56 - 8 * i));
	}
}

void hash_from_bytes(const uint8_t in[16], struct hash128 *h)
{
	uint64_t hi = 0, lo = 0;

	for (int i = 0; i < 8; i++) {
		hi = hi << 8 | in[i];
		lo = lo << 8 | in[8 + i];
	}
	h->hi = hi;
	h->lo = lo;
}

/* XXH3_state_t is opaque to callers: they hold it through this wrapper. */
struct hash_stream {
	XXH3_state_t *st;
};

int hash_stream_new(struct hash_stream **out)
{
	struct hash_stream *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->st = XXH3_createState();
	if (!s->st || XXH3_128bits_reset(s->st) != XXH_OK) {
		hash_stream_free(s);
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

void hash_stream_update(struct hash_stream *s, const void *buf, size_t len)
{
	XXH3_128bits_update(s->st, buf, len);
}

struct hash128 hash_stream_digest(const struct hash_stream *s)
{
	XXH128_hash_t h = XXH3_128bits_digest(s->st);
	struct hash128 out = { .hi = h.high64, .lo = h.low64 };

	return out;
}

void hash_stream_free(struct hash_stream *s)
{
	if (!s)
		return;
	if (s->st)
		XXH3_freeState(s->st);
	free(s);
}
