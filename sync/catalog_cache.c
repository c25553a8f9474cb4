/*
 * catalog_cache — the catalog's side of this node's cache (sync/cache.c): table `local`.
 *
 * A row is keyed by (category, path) and records up to three independent things: the copy held
 * here (hash, size, present bitmap, chunk hashes, cached_bytes, synced_at, last_access), the
 * pin (pinned, see catalog_set_pin in catalog.c) and the last fetch error. Identical content at
 * several paths is one cache file, so the copy columns of every row holding a version are
 * written together, by hash (index local_hash, schema v3). A row that records none of the three
 * is deleted in the same transaction that emptied it, so the table only holds what matters.
 *
 * How it works:
 * - Statements are prepared per call (catalog.c's statement table is private to it). The cache
 *   writes at most one small statement per 4 MiB chunk, so the few microseconds of a prepare
 *   are noise next to the chunk's own I/O.
 * - Writes that touch one statement rely on SQLite's own atomicity; the others (drop, set
 *   error) run in one BEGIN IMMEDIATE transaction.
 * - NULL stands for "none" in the copy columns: synced_at 0 and last_access 0 are stored as
 *   NULL, and read back as 0.
 *
 * Locking as in catalog.c: every exported call takes cat->lock for its whole work and releases
 * it before returning; catalog_local_foreach's callback runs with it held.
 */
#include "sync/catalog.h"
#include "sync/catalog_int.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sync/log.h"
#include "sync/util.h"

#define LOCAL_COPY_COLS                                                                     \
	"hash, size, present, chunks, cached_bytes, synced_at, last_access"

static const char sql_foreach[] =
	"SELECT category, path, " LOCAL_COPY_COLS ", pinned, last_error FROM local "
	"ORDER BY category, path";

static const char sql_put[] =
	"INSERT INTO local (category, path, " LOCAL_COPY_COLS ") "
	"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
	"ON CONFLICT (category, path) DO UPDATE SET hash = excluded.hash, size = excluded.size, "
	"present = excluded.present, chunks = excluded.chunks, "
	"cached_bytes = excluded.cached_bytes, synced_at = excluded.synced_at, "
	"last_access = excluded.last_access";

/* ?5 NULL leaves last_error alone, '' clears it. */
static const char sql_set_present[] =
	"UPDATE local SET present = ?2, cached_bytes = ?3, synced_at = ?4, "
	"last_error = CASE WHEN ?5 IS NULL THEN last_error ELSE nullif(?5, '') END "
	"WHERE hash = ?1";

static const char sql_set_chunks[] = "UPDATE local SET chunks = ?2 WHERE hash = ?1";

static const char sql_touch[] =
	"UPDATE local SET last_access = max(coalesce(last_access, 0), ?2) WHERE hash = ?1";

#define LOCAL_CLEAR_COPY                                                                    \
	"UPDATE local SET hash = NULL, size = NULL, present = NULL, chunks = NULL, "          \
	"cached_bytes = 0, synced_at = NULL, last_access = NULL "

static const char sql_drop_hash[] = LOCAL_CLEAR_COPY "WHERE hash = ?1";
static const char sql_drop_path[] = LOCAL_CLEAR_COPY "WHERE category = ?1 AND path = ?2";

#define LOCAL_EMPTY "hash IS NULL AND pinned = 0 AND last_error IS NULL"

static const char sql_prune_all[] = "DELETE FROM local WHERE " LOCAL_EMPTY;
static const char sql_prune_path[] =
	"DELETE FROM local WHERE category = ?1 AND path = ?2 AND " LOCAL_EMPTY;

static const char sql_set_error[] =
	"INSERT INTO local (category, path, last_error) VALUES (?1, ?2, nullif(?3, '')) "
	"ON CONFLICT (category, path) DO UPDATE SET last_error = excluded.last_error";

static const char sql_meta_set[] =
	"INSERT INTO meta (key, value) VALUES (?1, ?2) "
	"ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/* Binds @len bytes (NULL for a NULL @b), copied; a no-op once *rc holds an error. */
static void bind_blob(sqlite3_stmt *st, int i, const void *b, size_t len, int *rc)
{
	if (*rc != SQLITE_OK)
		return;
	if (!b)
		*rc = sqlite3_bind_null(st, i);
	else
		*rc = sqlite3_bind_blob64(st, i, len ? b : "", len, SQLITE_TRANSIENT);
}

/* Binds @v, or NULL when it is 0 ("none"). */
static void bind_int_or_null(sqlite3_stmt *st, int i, int64_t v, int *rc)
{
	if (*rc != SQLITE_OK)
		return;
	*rc = v ? sqlite3_bind_int64(st, i, v) : sqlite3_bind_null(st, i);
}

/* The chunk list in its stored form (16 bytes each); *out NULL for @chunks NULL. */
static int chunks_to_blob(const struct hash128 *chunks, size_t n, uint8_t **out)
{
	uint8_t *blob;

	*out = NULL;
	if (!chunks)
		return 0;
	if (n > SIZE_MAX / 16 - 1)
		return -EINVAL;
	blob = malloc(n * 16 + 1);
	if (!blob)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		hash_to_bytes(&chunks[i], blob + 16 * i);
	*out = blob;
	return 0;
}

static bool valid_file_key(const char *category, const char *path)
{
	return catalog_valid_category(category) && path && path_is_clean_relative(path);
}

static bool valid_any_key(const char *category, const char *path)
{
	return catalog_valid_category(category) && path && (!*path || path_is_clean_relative(path));
}

/* Fills @l from a row of sql_foreach; *chunks gets the decoded chunk list (free() it). */
static void row_to_local(sqlite3_stmt *st, struct cat_local *l, struct hash128 **chunks)
{
	const void *hash = sqlite3_column_blob(st, 2);
	const uint8_t *blob;
	size_t len;

	memset(l, 0, sizeof(*l));
	*chunks = NULL;
	l->category = (const char *)sqlite3_column_text(st, 0);
	l->path = (const char *)sqlite3_column_text(st, 1);
	l->pinned = sqlite3_column_int(st, 9) != 0;
	l->last_error = (const char *)sqlite3_column_text(st, 10);
	if (!hash || sqlite3_column_bytes(st, 2) != 16 ||
	    sqlite3_column_type(st, 3) != SQLITE_INTEGER || sqlite3_column_int64(st, 3) < 0)
		return;
	l->has_version = true;
	hash_from_bytes(hash, &l->hash);
	l->size = (uint64_t)sqlite3_column_int64(st, 3);
	l->present = sqlite3_column_blob(st, 4);
	l->present_len = (size_t)sqlite3_column_bytes(st, 4);
	l->cached_bytes = (uint64_t)sqlite3_column_int64(st, 6);
	l->synced_at = sqlite3_column_int64(st, 7);
	l->last_access = sqlite3_column_int64(st, 8);

	blob = sqlite3_column_blob(st, 5);
	len = (size_t)sqlite3_column_bytes(st, 5);
	if (sqlite3_column_type(st, 5) == SQLITE_NULL || len % 16 != 0)
		return; /* unknown, or not a chunk list: the cache treats both as unknown */
	*chunks = malloc(len / 16 * sizeof(**chunks) + 1);
	if (!*chunks)
		return; /* the list is optional; the cache asks for it again */
	for (size_t i = 0; i < len / 16; i++)
		hash_from_bytes(blob + 16 * i, &(*chunks)[i]);
	l->chunks = *chunks;
	l->n_chunks = len / 16;
}

int catalog_local_foreach(struct catalog *cat, int (*fn)(void *arg, const struct cat_local *l),
			  void *arg)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc, ret = -EINVAL;

	if (!fn)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_foreach, &st);
	if (ret)
		goto out;
	for (;;) {
		struct hash128 *chunks;
		struct cat_local l;

		rc = sqlite3_step(st);
		if (rc == SQLITE_DONE)
			break;
		if (rc != SQLITE_ROW) {
			ret = catalog_sql_fail(cat, rc, "walk local");
			break;
		}
		row_to_local(st, &l, &chunks);
		if (!l.category || !l.path) {
			free(chunks);
			continue; /* NOT NULL columns: cannot happen */
		}
		ret = fn(arg, &l);
		free(chunks);
		if (ret)
			break;
	}
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_local_put(struct catalog *cat, const struct cat_local *l)
{
	sqlite3_stmt *st = NULL;
	uint8_t *chunks = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!l || !l->has_version || !valid_file_key(l->category, l->path) || l->size > INT64_MAX ||
	    l->cached_bytes > INT64_MAX)
		goto out;
	ret = chunks_to_blob(l->chunks, l->n_chunks, &chunks);
	if (ret)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_put, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, l->category, &rc);
	catalog_bind_text(st, 2, l->path, &rc);
	catalog_bind_hash(st, 3, &l->hash, &rc);
	catalog_bind_int(st, 4, (int64_t)l->size, &rc);
	bind_blob(st, 5, l->present ? (const void *)l->present : "",
		  l->present ? l->present_len : 0, &rc);
	bind_blob(st, 6, chunks, l->n_chunks * 16, &rc);
	catalog_bind_int(st, 7, (int64_t)l->cached_bytes, &rc);
	bind_int_or_null(st, 8, l->synced_at, &rc);
	bind_int_or_null(st, 9, l->last_access, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	free(chunks);
	return ret;
}

int catalog_local_set_present(struct catalog *cat, const struct hash128 *hash,
			      const uint8_t *present, size_t present_len, uint64_t cached_bytes,
			      int64_t synced_at, const char *error)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!hash || cached_bytes > INT64_MAX)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_set_present, &st);
	if (ret)
		goto out;
	catalog_bind_hash(st, 1, hash, &rc);
	bind_blob(st, 2, present ? (const void *)present : "", present ? present_len : 0, &rc);
	catalog_bind_int(st, 3, (int64_t)cached_bytes, &rc);
	bind_int_or_null(st, 4, synced_at, &rc);
	if (rc == SQLITE_OK)
		rc = error ? sqlite3_bind_text(st, 5, error, -1, SQLITE_STATIC)
			   : sqlite3_bind_null(st, 5);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_local_set_chunks(struct catalog *cat, const struct hash128 *hash,
			     const struct hash128 *chunks, size_t n)
{
	static const struct hash128 no_chunks; /* an empty file's list: known, and empty */
	sqlite3_stmt *st = NULL;
	uint8_t *blob = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!hash || (n && !chunks))
		goto out;
	ret = chunks_to_blob(chunks ? chunks : &no_chunks, n, &blob);
	if (ret)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_set_chunks, &st);
	if (ret)
		goto out;
	catalog_bind_hash(st, 1, hash, &rc);
	bind_blob(st, 2, blob, n * 16, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	free(blob);
	return ret;
}

int catalog_local_touch(struct catalog *cat, const struct hash128 *hash, int64_t when)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!hash)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_touch, &st);
	if (ret)
		goto out;
	catalog_bind_hash(st, 1, hash, &rc);
	catalog_bind_int(st, 2, when, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

/* Runs @sql with ?1 = @category and ?2 = @path when @category is not NULL; cat->lock held. */
static int run_key_stmt(struct catalog *cat, const char *sql, const char *category,
			const char *path)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = catalog_prepare(cat, sql, &st);
	if (ret)
		goto out;
	if (category) {
		catalog_bind_text(st, 1, category, &rc);
		catalog_bind_text(st, 2, path, &rc);
	}
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	return ret;
}

/* catalog_local_drop's statements, inside its transaction. */
static int drop_rows(struct catalog *cat, const struct hash128 *hash, const char *category,
		     const char *path)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	if (!hash) {
		ret = run_key_stmt(cat, sql_drop_path, category, path);
		return ret ? ret : run_key_stmt(cat, sql_prune_path, category, path);
	}
	ret = catalog_prepare(cat, sql_drop_hash, &st);
	if (ret == 0) {
		catalog_bind_hash(st, 1, hash, &rc);
		ret = catalog_stmt_run_bound(cat, st, rc);
	}
	sqlite3_finalize(st);
	/* The rows it emptied are among every empty row; there are no others to spare. */
	return ret ? ret : run_key_stmt(cat, sql_prune_all, NULL, NULL);
}

int catalog_local_drop(struct catalog *cat, const struct hash128 *hash, const char *category,
		       const char *path)
{
	int ret = -EINVAL;

	if (!hash && !valid_file_key(category, path))
		goto out;
	ret = catalog_write_begin(cat);
	if (ret == 0)
		ret = catalog_write_end(cat, drop_rows(cat, hash, category, path));
out:
	return ret;
}

/* catalog_local_set_error's statements, inside its transaction. */
static int set_error_row(struct catalog *cat, const char *category, const char *path,
			 const char *msg)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = catalog_prepare(cat, sql_set_error, &st);
	if (ret == 0) {
		catalog_bind_text(st, 1, category, &rc);
		catalog_bind_text(st, 2, path, &rc);
		catalog_bind_text(st, 3, msg ? msg : "", &rc);
		ret = catalog_stmt_run_bound(cat, st, rc);
	}
	sqlite3_finalize(st);
	return ret ? ret : run_key_stmt(cat, sql_prune_path, category, path);
}

int catalog_local_set_error(struct catalog *cat, const char *category, const char *path,
			    const char *msg)
{
	int ret = -EINVAL;

	if (!valid_file_key(category, path))
		goto out;
	ret = catalog_write_begin(cat);
	if (ret == 0)
		ret = catalog_write_end(cat, set_error_row(cat, category, path, msg));
out:
	return ret;
}

int catalog_local_prune(struct catalog *cat, const char *category, const char *path)
{
	bool locked = false;
	int ret = -EINVAL;

	if (category && !valid_any_key(category, path))
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = run_key_stmt(cat, category ? sql_prune_path : sql_prune_all, category, path);
out:
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_meta_set_durable(struct catalog *cat, const char *key, const char *value)
{
	sqlite3_stmt *st = NULL;
	bool locked = false, full = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!key || !*key || !value)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	/* In WAL mode, FULL syncs the log at this commit, which makes it and all before it
	 * durable; NORMAL (catalog.c's setting) would leave that to the next checkpoint. */
	rc = sqlite3_exec(cat->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "PRAGMA synchronous = FULL");
		goto out;
	}
	full = true;
	ret = catalog_prepare(cat, sql_meta_set, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, key, &rc);
	catalog_bind_text(st, 2, value, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	if (full) {
		rc = sqlite3_exec(cat->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
		if (rc != SQLITE_OK && ret == 0)
			ret = catalog_sql_fail(cat, rc, "PRAGMA synchronous = NORMAL");
	}
	if (locked)
		catalog_unlock(cat);
	return ret;
}
