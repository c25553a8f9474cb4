/*
 * hash — XXH3-128 content hashes of whole files, of their 4 MiB chunks and 64 KiB blocks.
 *
 * A file is read once, streaming through a fixed buffer (never whole in memory); the whole-file
 * digest and every chunk digest come out of the same pass. The text form is
 * "xxh3-128:<32 lowercase hex>", high 64 bits first, as `xxhsum -H2` prints it.
 */
#ifndef MESHFS_HASH_H
#define MESHFS_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HASH_CHUNK_SIZE ((uint64_t)4 << 20)
/* Blocks are the finer grain a reader may be answered at before its whole chunk is here. */
#define HASH_BLOCK_SIZE ((uint64_t)64 << 10)
#define HASH_BLOCKS_PER_CHUNK ((size_t)(HASH_CHUNK_SIZE / HASH_BLOCK_SIZE))
#define HASH_STR_LEN 42 /* "xxh3-128:" + 32 hex + NUL */

struct hash128 {
	uint64_t hi;
	uint64_t lo;
};

/* The XXH3-128 of @len bytes at @buf. */
struct hash128 hash_buf(const void *buf, size_t len);

/* Incremental hashing of data that arrives in pieces (a chunk being received). */
struct hash_stream;
int hash_stream_new(struct hash_stream **out);
void hash_stream_update(struct hash_stream *s, const void *buf, size_t len);
/* The hash of everything given so far (the stream may go on). */
struct hash128 hash_stream_digest(const struct hash_stream *s);
void hash_stream_free(struct hash_stream *s);

/*
 * Hashes the file open on @fd from offset 0 to EOF with pread. On success returns 0, the
 * whole-file hash in *whole, the size in *size and, if @chunks is not NULL, a new array of
 * ceil(size / HASH_CHUNK_SIZE) chunk hashes (an empty file has none; free() it) in *chunks
 * and its length in *n_chunks. Returns -errno on a read error (nothing allocated).
 */
int hash_fd(int fd, struct hash128 *whole, uint64_t *size, struct hash128 **chunks,
	    size_t *n_chunks);

/* hash_fd that also gives, if @blocks is not NULL, a new array of ceil(size / HASH_BLOCK_SIZE)
 * block hashes in *blocks (free() it) and its length in *n_blocks. */
int hash_fd_blocks(int fd, struct hash128 *whole, uint64_t *size, struct hash128 **chunks,
		   size_t *n_chunks, struct hash128 **blocks, size_t *n_blocks);

/* Writes "xxh3-128:<hex>" into @out (HASH_STR_LEN bytes). */
void hash_format(const struct hash128 *h, char out[HASH_STR_LEN]);

/* Parses the text form; accepts exactly "xxh3-128:" and 32 hex digits. 0 or -EINVAL. */
int hash_parse(const char *s, struct hash128 *out);

bool hash_equal(const struct hash128 *a, const struct hash128 *b);

/* Big-endian 16-byte form (for storage as a BLOB) and back. */
void hash_to_bytes(const struct hash128 *h, uint8_t out[16]);
void hash_from_bytes(const uint8_t in[16], struct hash128 *h);

#endif
