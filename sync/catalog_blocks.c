/*
 * catalog_blocks — the 64 KiB block hashes of this node's files, for the data server.
 *
 * A chunk's block hashes are one BLOB beside its chunk hash (schema version 4, written by
 * catalog_publish_local_batch). A reader asks the data server for a few blocks and gets their
 * hashes with the bytes (docs/protocol.md), so it can be answered once those blocks are
 * verified instead of waiting for their whole 4 MiB chunk. The blocks are looked up together
 * with the entry's version in one statement, so they never belong to another version.
 */
#include <errno.h>
#include <string.h>

#include "sync/catalog_int.h"
#include "sync/hash.h"
#include "sync/log.h"

static const char sql_blocks[] =
	"SELECT c.idx, c.hash, c.blocks, e.size FROM entries e "
	"JOIN chunks c ON c.entry_id = e.id "
	"WHERE e.host = ?1 AND e.category = ?2 AND e.path = ?3 AND e.deleted = 0 "
	"AND e.hash = ?4 AND c.idx BETWEEN ?5 AND ?6 ORDER BY c.idx";

/* The number of blocks of chunk @idx of a file of @size bytes. */
static size_t blocks_in_chunk(uint64_t size, uint64_t idx)
{
	uint64_t start = idx * HASH_CHUNK_SIZE;
	uint64_t end = start + HASH_CHUNK_SIZE > size ? size : start + HASH_CHUNK_SIZE;

	return (size_t)((end - start + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE);
}

/*
 * Copies the blocks of the row @st holds that fall in [@first, @first + @n) into @out.
 * Returns how many it copied, or -ENODATA / -EIO.
 */
static long copy_row_blocks(struct catalog *cat, sqlite3_stmt *st, uint64_t first, size_t n,
			    struct hash128 *out)
{
	uint64_t idx = (uint64_t)sqlite3_column_int64(st, 0);
	uint64_t size = (uint64_t)sqlite3_column_int64(st, 3);
	size_t nb = blocks_in_chunk(size, idx);
	uint64_t base = idx * HASH_BLOCKS_PER_CHUNK;
	uint64_t lo = first > base ? first : base;
	uint64_t hi = first + n < base + nb ? first + n : base + nb;
	const uint8_t *blob;

	if (sqlite3_column_bytes(st, 1) != 16)
		goto bad;
	if (sqlite3_column_type(st, 2) == SQLITE_NULL) {
		if (nb != 1)
			return -ENODATA;
		if (lo < hi)
			hash_from_bytes(sqlite3_column_blob(st, 1), &out[lo - first]);
		return lo < hi ? 1 : 0;
	}
	if ((size_t)sqlite3_column_bytes(st, 2) != 16 * nb)
		goto bad;
	blob = sqlite3_column_blob(st, 2);
	for (uint64_t b = lo; b < hi; b++)
		hash_from_bytes(blob + 16 * (b - base), &out[b - first]);
	return lo < hi ? (long)(hi - lo) : 0;
bad:
	log_msg(LOG_ERR, "catalog %s: malformed block hashes of chunk %llu", cat->path,
		(unsigned long long)idx);
	return -EIO;
}

int catalog_get_blocks(struct catalog *cat, const char *host, const char *category,
		       const char *path, const struct hash128 *version, uint64_t first, size_t n,
		       struct hash128 *out)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	size_t got = 0;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !category || !path || !version || !out || n == 0)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	if (!cat->blocks_stmt) {
		ret = catalog_prepare(cat, sql_blocks, &cat->blocks_stmt);
		if (ret)
			goto out;
	}
	st = cat->blocks_stmt;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	catalog_bind_hash(st, 4, version, &rc);
	catalog_bind_int(st, 5, (int64_t)(first / HASH_BLOCKS_PER_CHUNK), &rc);
	catalog_bind_int(st, 6, (int64_t)((first + n - 1) / HASH_BLOCKS_PER_CHUNK), &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		long copied = copy_row_blocks(cat, st, first, n, out);

		if (copied < 0) {
			ret = (int)copied;
			goto out;
		}
		got += (size_t)copied;
	}
	if (rc != SQLITE_DONE) {
		ret = catalog_sql_fail(cat, rc, "get blocks");
		goto out;
	}
	ret = got == n ? 0 : -ENOENT;
out:
	if (st) {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
	if (locked)
		catalog_unlock(cat);
	return ret;
}
