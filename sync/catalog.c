/*
 * catalog — the node's SQLite catalog: hosts, entries and their chunks, local presence and pins,
 * the sync queue and a few meta settings.
 *
 * How it works (opening the connection, its pragmas, the schema and its migrations are in
 * catalog_open.c; what the catalog_*.c files share is in catalog_int.h):
 * - seq: this node's next seq for a host is max(hosts.last_seq, max(entries.seq)) + 1, taken
 *   and written back to hosts.last_seq inside the same IMMEDIATE transaction as the change it
 *   numbers. hosts.last_seq never goes down, so a seq is never handed out twice, even after
 *   the entry that carried it was deleted or re-published (a delete takes a new seq too: the
 *   tombstone must show up in catalog_changes for peers that already saw the file).
 * - Statements are prepared on first use and kept until catalog_close.
 * - Per-host totals (live files and bytes) live in a connection-private TEMP table kept up to
 *   date by TEMP triggers on entries, so they change in the very transaction that changes an
 *   entry (rolled back with it) and catalog_totals() costs a lookup, not a count of every
 *   entry: the health xattr asks for them on every read. Nothing of it is stored in the
 *   catalog file, so the schema is untouched. The table (made by catalog_open) is filled by
 *   one count on first use, and counted again whenever PRAGMA data_version shows that another
 *   connection committed.
 *
 * Locking: cat->lock serialises every call on one struct catalog: the connection and its
 * cached statements are not safe to share between threads, and a publish is several
 * statements that must not interleave with another thread's. It is the one lock held across
 * sqlite calls, because it *is* the connection's lock; other processes (e.g. `meshfs check`)
 * are serialised by SQLite itself. Callbacks run with it held (the rows they see are only valid
 * while the statement is stepped), so a callback must not call the catalog: the mutex is
 * error-checking and such a call fails with -EDEADLK instead of hanging.
 */
#include "sync/catalog.h"
#include "sync/catalog_int.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sync/log.h"
#include "sync/util.h"

#define ENTRY_COLS CATALOG_ENTRY_COLS

enum stmt_id {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_NEXT_SEQ,
	ST_ENTRY_UPSERT,
	ST_CHUNKS_CLEAR,
	ST_CHUNK_INSERT,
	ST_ENTRY_LIVE_ID,
	ST_ENTRY_MARK_DELETED,
	ST_CONFIRM,
	ST_GET,
	ST_FOREACH_HOST,
	ST_FOREACH_ALL,
	ST_CHANGES,
	ST_CHANGES_PAGE,
	ST_CHUNKS_GET,
	ST_MAX_SEQ,
	ST_TOTALS_HOST,
	ST_TOTALS_ALL,
	ST_DATA_VERSION,
	ST_TOTALS_COUNTED_AT,
	ST_PIN_SET,
	ST_PIN_CLEAR,
	ST_PIN_GET,
	ST_META_GET,
	ST_META_SET,
	ST_COUNT
};

const size_t catalog_n_stmts = ST_COUNT;

static const char *const stmt_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	/* Also covers rows that came from elsewhere than this node's own counter. */
	[ST_NEXT_SEQ] = "INSERT INTO hosts (name, last_seq) VALUES (?1, "
			"(SELECT coalesce(max(seq), 0) FROM entries WHERE host = ?1) + 1) "
			"ON CONFLICT (name) DO UPDATE SET last_seq = max(last_seq, "
			"(SELECT coalesce(max(seq), 0) FROM entries WHERE host = ?1)) + 1 "
			"RETURNING last_seq",
	[ST_ENTRY_UPSERT] =
		"INSERT INTO entries (host, category, path, size, mtime_ns, hash, origin, seq, "
		"deleted, dev, ino, ctime_ns, confirmed_at) "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?1, ?7, 0, ?8, ?9, ?10, ?11) "
		"ON CONFLICT (host, category, path) DO UPDATE SET size = excluded.size, "
		"mtime_ns = excluded.mtime_ns, hash = excluded.hash, origin = excluded.origin, "
		"seq = excluded.seq, deleted = 0, dev = excluded.dev, ino = excluded.ino, "
		"ctime_ns = excluded.ctime_ns, confirmed_at = excluded.confirmed_at "
		"RETURNING id",
	[ST_CHUNKS_CLEAR] = "DELETE FROM chunks WHERE entry_id = ?1",
	[ST_CHUNK_INSERT] = "INSERT INTO chunks (entry_id, idx, hash, blocks) "
			    "VALUES (?1, ?2, ?3, ?4)",
	[ST_ENTRY_LIVE_ID] = "SELECT id FROM entries "
			     "WHERE host = ?1 AND category = ?2 AND path = ?3 AND deleted = 0",
	[ST_ENTRY_MARK_DELETED] = "UPDATE entries SET deleted = 1, seq = ?2 WHERE id = ?1",
	[ST_CONFIRM] = "UPDATE entries SET confirmed_at = ?4 "
		       "WHERE host = ?1 AND category = ?2 AND path = ?3 AND deleted = 0",
	[ST_GET] = "SELECT " ENTRY_COLS " FROM entries "
		   "WHERE host = ?1 AND category = ?2 AND path = ?3",
	[ST_FOREACH_HOST] = "SELECT " ENTRY_COLS " FROM entries "
			    "WHERE host = ?1 AND deleted = 0 ORDER BY seq",
	[ST_FOREACH_ALL] = "SELECT " ENTRY_COLS " FROM entries "
			   "WHERE deleted = 0 ORDER BY seq, host",
	[ST_CHANGES] = "SELECT " ENTRY_COLS " FROM entries "
		       "WHERE host = ?1 AND seq > ?2 ORDER BY seq",
	/* Served by the (host, seq) index: a page costs its rows, not the size of the table. */
	[ST_CHANGES_PAGE] = "SELECT " ENTRY_COLS " FROM entries "
			    "WHERE host = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
	/* One statement, one snapshot: the entry and its chunks cannot come from two commits. */
	[ST_CHUNKS_GET] = "SELECT c.idx, c.hash FROM entries e "
			  "LEFT JOIN chunks c ON c.entry_id = e.id "
			  "WHERE e.host = ?1 AND e.category = ?2 AND e.path = ?3 AND e.deleted = 0 "
			  "ORDER BY c.idx",
	[ST_MAX_SEQ] = "SELECT max(coalesce((SELECT last_seq FROM hosts WHERE name = ?1), 0), "
		       "coalesce((SELECT max(seq) FROM entries WHERE host = ?1), 0))",
	/* Kept by triggers (totals_sql in catalog_open.c); one row per host that ever had a live
	 * entry. */
	[ST_TOTALS_HOST] = "SELECT coalesce(sum(files), 0), coalesce(sum(bytes), 0) "
			   "FROM temp.entry_totals WHERE host = ?1",
	[ST_TOTALS_ALL] = "SELECT coalesce(sum(files), 0), coalesce(sum(bytes), 0) "
			  "FROM temp.entry_totals",
	[ST_DATA_VERSION] = "PRAGMA data_version",
	[ST_TOTALS_COUNTED_AT] = "SELECT data_version FROM temp.entry_totals_state",
	[ST_PIN_SET] = "INSERT INTO local (category, path, pinned) VALUES (?1, ?2, 1) "
		       "ON CONFLICT (category, path) DO UPDATE SET pinned = 1",
	/* Unpinning never creates a row. */
	[ST_PIN_CLEAR] = "UPDATE local SET pinned = 0 WHERE category = ?1 AND path = ?2",
	[ST_PIN_GET] = "SELECT pinned FROM local WHERE category = ?1 AND path = ?2",
	[ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2) "
			"ON CONFLICT (key) DO UPDATE SET value = excluded.value",
};

/* Turns an SQLite result code into -errno, keeping the OS error when SQLite saw one. */
int catalog_sqlite_to_errno(sqlite3 *db, int rc)
{
	int sys = db ? sqlite3_system_errno(db) : 0;

	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE:
		return 0;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_READONLY:
		return sys > 0 ? -sys : -EROFS;
	case SQLITE_CANTOPEN:
		return sys > 0 ? -sys : -EACCES;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_TOOBIG:
		return -E2BIG;
	case SQLITE_CONSTRAINT:
	case SQLITE_MISMATCH:
	case SQLITE_RANGE:
		return -EINVAL;
	case SQLITE_NOTADB:
		return -EPROTO;
	case SQLITE_IOERR:
		return sys > 0 ? -sys : -EIO;
	default:
		return -EIO;
	}
}

/* Logs the failure of @what and returns it as -errno. */
int catalog_sql_fail(struct catalog *cat, int rc, const char *what)
{
	log_msg(LOG_ERR, "catalog %s: %s: %s", cat->path, what,
		cat->db ? sqlite3_errmsg(cat->db) : sqlite3_errstr(rc));
	return catalog_sqlite_to_errno(cat->db, rc);
}

int catalog_lock(struct catalog *cat)
{
	int r = pthread_mutex_lock(&cat->lock);

	if (r == EDEADLK)
		log_msg(LOG_ERR, "catalog %s: called from one of its own callbacks", cat->path);
	return -r;
}

void catalog_unlock(struct catalog *cat)
{
	pthread_mutex_unlock(&cat->lock);
}

int catalog_prepare(struct catalog *cat, const char *sql, sqlite3_stmt **out)
{
	int rc = sqlite3_prepare_v2(cat->db, sql, -1, out, NULL);

	return rc == SQLITE_OK ? 0 : catalog_sql_fail(cat, rc, "prepare");
}

/* The cached statement @id, reset and unbound by the previous user. */
static int stmt_get(struct catalog *cat, enum stmt_id id, sqlite3_stmt **out)
{
	int rc, ret = 0;

	if (!cat->stmts[id]) {
		rc = sqlite3_prepare_v3(cat->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
					&cat->stmts[id], NULL);
		if (rc != SQLITE_OK) {
			ret = catalog_sql_fail(cat, rc, "prepare");
			goto out;
		}
	}
	*out = cat->stmts[id];
out:
	return ret;
}

/* Readies a cached statement for its next user; the strings it borrowed are forgotten. */
static void stmt_put(sqlite3_stmt *st)
{
	if (st) {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
}

/* Binders that do nothing once *rc holds an error, so a run of binds is checked once. */
void catalog_bind_text(sqlite3_stmt *st, int i, const char *s, int *rc)
{
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

void catalog_bind_int(sqlite3_stmt *st, int i, int64_t v, int *rc)
{
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_int64(st, i, v);
}

void catalog_bind_hash(sqlite3_stmt *st, int i, const struct hash128 *h, int *rc)
{
	uint8_t b[16];

	hash_to_bytes(h, b);
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_blob(st, i, b, sizeof(b), SQLITE_TRANSIENT);
}

/* Steps a statement that returns no rows (or whose rows are not wanted) to completion. */
int catalog_stmt_run(struct catalog *cat, sqlite3_stmt *st)
{
	int rc;

	do {
		rc = sqlite3_step(st);
	} while (rc == SQLITE_ROW);
	return rc == SQLITE_DONE ? 0 : catalog_sql_fail(cat, rc, sqlite3_sql(st));
}

int catalog_stmt_run_bound(struct catalog *cat, sqlite3_stmt *st, int rc)
{
	return rc == SQLITE_OK ? catalog_stmt_run(cat, st) : catalog_sql_fail(cat, rc, "bind");
}

static int run_cached(struct catalog *cat, enum stmt_id id)
{
	sqlite3_stmt *st = NULL;
	int ret;

	ret = stmt_get(cat, id, &st);
	if (ret == 0)
		ret = catalog_stmt_run(cat, st);
	stmt_put(st);
	return ret;
}

/* BEGIN IMMEDIATE. */
static int tx_begin(struct catalog *cat)
{
	return run_cached(cat, ST_BEGIN);
}

static int tx_commit(struct catalog *cat)
{
	return run_cached(cat, ST_COMMIT);
}

/* Undoes an open transaction, if SQLite has not already rolled it back itself. */
static void tx_rollback(struct catalog *cat)
{
	if (!sqlite3_get_autocommit(cat->db))
		run_cached(cat, ST_ROLLBACK);
}

int catalog_write_begin(struct catalog *cat)
{
	int ret = catalog_lock(cat);

	if (ret == 0) {
		ret = tx_begin(cat);
		if (ret)
			catalog_unlock(cat);
	}
	return ret;
}

int catalog_write_end(struct catalog *cat, int ret)
{
	if (ret == 0)
		ret = tx_commit(cat);
	if (ret)
		tx_rollback(cat);
	catalog_unlock(cat);
	return ret;
}

bool catalog_valid_category(const char *category)
{
	return category && path_is_clean_relative(category) && !strchr(category, '/');
}

bool catalog_valid_key(const char *host, const char *category, const char *path)
{
	return host && *host && catalog_valid_category(category) && path &&
	       path_is_clean_relative(path);
}

/* Fills @e from the current row of a statement selecting ENTRY_COLS. */
int catalog_row_to_entry(sqlite3_stmt *st, struct cat_entry *e)
{
	const void *blob = sqlite3_column_blob(st, 5);
	int ret = 0;

	memset(e, 0, sizeof(*e));
	e->host = (const char *)sqlite3_column_text(st, 0);
	e->category = (const char *)sqlite3_column_text(st, 1);
	e->path = (const char *)sqlite3_column_text(st, 2);
	e->size = (uint64_t)sqlite3_column_int64(st, 3);
	e->mtime_ns = sqlite3_column_int64(st, 4);
	e->origin = (const char *)sqlite3_column_text(st, 6);
	e->seq = sqlite3_column_int64(st, 7);
	e->deleted = sqlite3_column_int(st, 8) != 0;
	e->dev = (uint64_t)sqlite3_column_int64(st, 9);
	e->ino = (uint64_t)sqlite3_column_int64(st, 10);
	e->ctime_ns = sqlite3_column_int64(st, 11);
	e->confirmed_at = sqlite3_column_int64(st, 12);
	if (!blob || sqlite3_column_bytes(st, 5) != 16 || !e->host || !e->category || !e->path ||
	    !e->origin) {
		ret = -EIO;
		goto out;
	}
	hash_from_bytes(blob, &e->hash);
out:
	return ret;
}

/* Steps @st and calls @fn on each row until it returns non-zero (which is returned). */
int catalog_walk(struct catalog *cat, sqlite3_stmt *st,
		 int (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	struct cat_entry e;
	int rc, ret = 0;

	for (;;) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_DONE)
			break;
		if (rc != SQLITE_ROW) {
			ret = catalog_sql_fail(cat, rc, "walk entries");
			break;
		}
		ret = catalog_row_to_entry(st, &e);
		if (ret) {
			log_msg(LOG_ERR, "catalog %s: malformed entry row", cat->path);
			break;
		}
		ret = fn(arg, &e);
		if (ret)
			break;
	}
	return ret;
}

/* Hands out @host's next seq and records it in hosts.last_seq; call inside a transaction. */
int catalog_next_seq(struct catalog *cat, const char *host, int64_t *seq)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, ST_NEXT_SEQ, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		ret = catalog_sql_fail(cat, rc, "next seq");
		goto out;
	}
	*seq = sqlite3_column_int64(st, 0);
	ret = catalog_stmt_run(cat, st);
out:
	stmt_put(st);
	return ret;
}

static int upsert_entry(struct catalog *cat, const struct cat_entry *e, int64_t seq,
			int64_t confirmed_at, int64_t *id)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, ST_ENTRY_UPSERT, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, e->host, &rc);
	catalog_bind_text(st, 2, e->category, &rc);
	catalog_bind_text(st, 3, e->path, &rc);
	catalog_bind_int(st, 4, (int64_t)e->size, &rc);
	catalog_bind_int(st, 5, e->mtime_ns, &rc);
	catalog_bind_hash(st, 6, &e->hash, &rc);
	catalog_bind_int(st, 7, seq, &rc);
	/* dev and ino are stored as their bit pattern; they only ever compare for equality. */
	catalog_bind_int(st, 8, (int64_t)e->dev, &rc);
	catalog_bind_int(st, 9, (int64_t)e->ino, &rc);
	catalog_bind_int(st, 10, e->ctime_ns, &rc);
	catalog_bind_int(st, 11, confirmed_at, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		ret = catalog_sql_fail(cat, rc, "upsert entry");
		goto out;
	}
	*id = sqlite3_column_int64(st, 0);
	ret = catalog_stmt_run(cat, st);
out:
	stmt_put(st);
	return ret;
}

static int clear_chunks(struct catalog *cat, int64_t id)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, ST_CHUNKS_CLEAR, &st);
	if (ret)
		goto out;
	catalog_bind_int(st, 1, id, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	stmt_put(st);
	return ret;
}

/* Binds the block hashes of chunk @i of @p (NULL when it has one block or none are known). */
static void bind_chunk_blocks(sqlite3_stmt *st, int col, const struct cat_publish *p, size_t i,
			      uint8_t *scratch, int *rc)
{
	size_t first = i * HASH_BLOCKS_PER_CHUNK, n;

	if (*rc != SQLITE_OK)
		return;
	n = p->n_blocks - first < HASH_BLOCKS_PER_CHUNK ? p->n_blocks - first
							: HASH_BLOCKS_PER_CHUNK;
	if (!p->blocks || n < 2) {
		*rc = sqlite3_bind_null(st, col);
		return;
	}
	for (size_t b = 0; b < n; b++)
		hash_to_bytes(&p->blocks[first + b], scratch + 16 * b);
	*rc = sqlite3_bind_blob(st, col, scratch, (int)(16 * n), SQLITE_TRANSIENT);
}

static int insert_chunks(struct catalog *cat, int64_t id, const struct cat_publish *p)
{
	uint8_t scratch[16 * HASH_BLOCKS_PER_CHUNK];
	sqlite3_stmt *st = NULL;
	int ret;

	ret = stmt_get(cat, ST_CHUNK_INSERT, &st);
	for (size_t i = 0; ret == 0 && i < p->n_chunks; i++) {
		int rc = SQLITE_OK;

		catalog_bind_int(st, 1, id, &rc);
		catalog_bind_int(st, 2, (int64_t)i, &rc);
		catalog_bind_hash(st, 3, &p->chunks[i], &rc);
		bind_chunk_blocks(st, 4, p, i, scratch, &rc);
		ret = catalog_stmt_run_bound(cat, st, rc);
		sqlite3_reset(st);
	}
	stmt_put(st);
	return ret;
}

/* Whether catalog_publish_local_batch() takes @p; logs why not. */
static bool publish_valid(struct catalog *cat, const struct cat_publish *p)
{
	const struct cat_entry *e = &p->e;
	size_t n_chunks = p->n_chunks;
	const struct hash128 *chunks = p->chunks;

	if (!catalog_valid_key(e->host, e->category, e->path) || e->size > INT64_MAX)
		return false;
	if (p->blocks && p->n_blocks != (e->size + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE) {
		log_msg(LOG_ERR, "catalog %s: %s/%s: %zu block hashes for %llu bytes", cat->path,
			e->category, e->path, p->n_blocks, (unsigned long long)e->size);
		return false;
	}
	/* The chunk list is served as the file's; it has to cover exactly its bytes. */
	if (n_chunks != (e->size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE ||
	    (n_chunks && !chunks)) {
		log_msg(LOG_ERR, "catalog %s: %s/%s: %zu chunk hashes for %llu bytes", cat->path,
			e->category, e->path, n_chunks, (unsigned long long)e->size);
		return false;
	}
	return true;
}

/* Records one publication inside the caller's transaction; its seq goes to *seq. */
static int publish_one(struct catalog *cat, const struct cat_publish *p, int64_t *seq)
{
	const struct cat_entry *e = &p->e;
	/* Publishing is the origin vouching for its file right now. */
	int64_t confirmed_at = e->confirmed_at ? e->confirmed_at : now_s(), id = 0;
	int ret;

	ret = catalog_next_seq(cat, e->host, seq);
	if (ret)
		goto out;
	ret = upsert_entry(cat, e, *seq, confirmed_at, &id);
	if (ret)
		goto out;
	ret = clear_chunks(cat, id);
	if (ret)
		goto out;
	ret = insert_chunks(cat, id, p);
out:
	return ret;
}

int catalog_publish_local_batch(struct catalog *cat, struct cat_publish *pubs, size_t n)
{
	int ret = -EINVAL;

	if (!pubs && n)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (!publish_valid(cat, &pubs[i]))
			goto out;
	ret = 0;
	if (!n)
		goto out;
	ret = catalog_write_begin(cat);
	if (ret)
		goto out;
	for (size_t i = 0; i < n && ret == 0; i++)
		ret = publish_one(cat, &pubs[i], &pubs[i].seq);
	ret = catalog_write_end(cat, ret);
out:
	return ret;
}

int catalog_publish_local(struct catalog *cat, const struct cat_entry *e,
			  const struct hash128 *chunks, size_t n_chunks, int64_t *seq)
{
	struct cat_publish pub = { .chunks = chunks, .n_chunks = n_chunks };
	int ret = -EINVAL;

	if (!e)
		goto out;
	pub.e = *e;
	ret = catalog_publish_local_batch(cat, &pub, 1);
	if (ret == 0 && seq)
		*seq = pub.seq;
out:
	return ret;
}

/* The id of @host's live entry (category, path): 0 and *id, -ENOENT, or -errno. */
static int live_entry_id(struct catalog *cat, const char *host, const char *category,
			 const char *path, int64_t *id)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, ST_ENTRY_LIVE_ID, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*id = sqlite3_column_int64(st, 0);
	else if (rc == SQLITE_DONE)
		ret = -ENOENT;
	else
		ret = catalog_sql_fail(cat, rc, "find entry");
out:
	stmt_put(st);
	return ret;
}

static int mark_deleted(struct catalog *cat, int64_t id, int64_t seq)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, ST_ENTRY_MARK_DELETED, &st);
	if (ret)
		goto out;
	catalog_bind_int(st, 1, id, &rc);
	catalog_bind_int(st, 2, seq, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	stmt_put(st);
	return ret;
}

int catalog_delete_local(struct catalog *cat, const char *host, const char *category,
			 const char *path, int64_t *seq)
{
	int64_t next = 0, id = 0;
	int ret = -EINVAL;

	if (!catalog_valid_key(host, category, path))
		goto out;
	ret = catalog_write_begin(cat);
	if (ret)
		goto out;
	/* Looked up first so that deleting nothing does not use up a seq. */
	ret = live_entry_id(cat, host, category, path, &id);
	if (ret == 0)
		ret = catalog_next_seq(cat, host, &next);
	if (ret == 0)
		ret = mark_deleted(cat, id, next);
	if (ret == 0)
		ret = clear_chunks(cat, id);
	ret = catalog_write_end(cat, ret);
	if (ret == 0 && seq)
		*seq = next;
out:
	return ret;
}

int catalog_confirm(struct catalog *cat, const char *host, const char *category, const char *path,
		    int64_t confirmed_at)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !category || !path)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_CONFIRM, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	catalog_bind_int(st, 4, confirmed_at, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
	if (ret == 0 && sqlite3_changes(cat->db) == 0)
		ret = -ENOENT;
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

/* Adapts catalog_get's void callback to walk(). */
struct get_ctx {
	void (*fn)(void *arg, const struct cat_entry *e);
	void *arg;
	bool found;
};

static int get_one(void *arg, const struct cat_entry *e)
{
	struct get_ctx *ctx = arg;

	ctx->fn(ctx->arg, e);
	ctx->found = true;
	return 1; /* (host, category, path) is unique; stop after the row */
}

int catalog_get(struct catalog *cat, const char *host, const char *category, const char *path,
		void (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	struct get_ctx ctx = { .fn = fn, .arg = arg };
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !category || !path || !fn)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_GET, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	ret = catalog_walk(cat, st, get_one, &ctx);
	if (ctx.found)
		ret = 0;
	else if (ret == 0)
		ret = -ENOENT;
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_foreach(struct catalog *cat, const char *host,
		    int (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!fn)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, host ? ST_FOREACH_HOST : ST_FOREACH_ALL, &st);
	if (ret)
		goto out;
	if (host)
		catalog_bind_text(st, 1, host, &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	ret = catalog_walk(cat, st, fn, arg);
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_changes(struct catalog *cat, const char *host, int64_t since,
		    int (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !fn)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_CHANGES, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_int(st, 2, since, &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	ret = catalog_walk(cat, st, fn, arg);
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_changes_page(struct catalog *cat, const char *host, int64_t since, size_t limit,
			 int (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !fn || limit == 0 || limit > INT64_MAX)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_CHANGES_PAGE, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_int(st, 2, since, &rc);
	catalog_bind_int(st, 3, (int64_t)limit, &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	ret = catalog_walk(cat, st, fn, arg);
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_get_chunks(struct catalog *cat, const char *host, const char *category,
		       const char *path, struct hash128 **out, size_t *n)
{
	struct hash128 *arr = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *st = NULL;
	bool locked = false, found = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!host || !category || !path || !out || !n)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_CHUNKS_GET, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	while (rc == SQLITE_OK || rc == SQLITE_ROW) {
		rc = sqlite3_step(st);
		if (rc != SQLITE_ROW)
			break;
		found = true;
		if (sqlite3_column_type(st, 0) == SQLITE_NULL)
			continue; /* the entry exists and has no chunks (an empty file) */
		if (sqlite3_column_int64(st, 0) != (int64_t)count ||
		    sqlite3_column_bytes(st, 1) != 16) {
			log_msg(LOG_ERR, "catalog %s: %s/%s: malformed chunk list", cat->path,
				category, path);
			ret = -EIO;
			goto out;
		}
		if (count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct hash128 *bigger = realloc(arr, ncap * sizeof(*arr));

			if (!bigger) {
				ret = -ENOMEM;
				goto out;
			}
			arr = bigger;
			cap = ncap;
		}
		hash_from_bytes(sqlite3_column_blob(st, 1), &arr[count++]);
	}
	if (rc != SQLITE_DONE) {
		ret = catalog_sql_fail(cat, rc, "get chunks");
		goto out;
	}
	if (!found) {
		ret = -ENOENT;
		goto out;
	}
	*out = arr;
	*n = count;
	arr = NULL;
out:
	free(arr);
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

/*
 * Runs cached statement @id with @host bound to ?1 (unless NULL) and reads its first row into
 * *a (and *b). With @found, no row is not an error: *found says whether there was one.
 * cat->lock must be held.
 */
static int query_row_locked(struct catalog *cat, enum stmt_id id, const char *host, int64_t *a,
			    int64_t *b, bool *found)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = stmt_get(cat, id, &st);
	if (ret)
		goto out;
	if (host)
		catalog_bind_text(st, 1, host, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (found)
		*found = rc == SQLITE_ROW;
	if (rc == SQLITE_DONE && found)
		goto out;
	if (rc != SQLITE_ROW) {
		ret = catalog_sql_fail(cat, rc, sqlite3_sql(st));
		goto out;
	}
	*a = sqlite3_column_int64(st, 0);
	if (b)
		*b = sqlite3_column_int64(st, 1);
out:
	stmt_put(st);
	return ret;
}

/* query_row_locked() that requires a row, under cat->lock. */
static int query_row(struct catalog *cat, enum stmt_id id, const char *host, int64_t *a, int64_t *b)
{
	int ret = catalog_lock(cat);

	if (ret == 0) {
		ret = query_row_locked(cat, id, host, a, b, NULL);
		catalog_unlock(cat);
	}
	return ret;
}

/*
 * Makes temp.entry_totals right: counts the entries again when they were never counted or
 * another connection has committed since (its changes fired no trigger here). One statement
 * counts, so the totals are of one snapshot; a commit racing with it only means the next call
 * counts again. cat->lock must be held.
 */
static int totals_fresh(struct catalog *cat)
{
	int64_t now = 0, counted = 0;
	bool have = false;
	char sql[512];
	int rc, ret;

	ret = query_row_locked(cat, ST_DATA_VERSION, NULL, &now, NULL, NULL);
	if (ret == 0)
		ret = query_row_locked(cat, ST_TOTALS_COUNTED_AT, NULL, &counted, NULL, &have);
	if (ret || (have && counted == now))
		goto out;
	snprintf(sql, sizeof(sql),
		 "SAVEPOINT totals_count;"
		 "DELETE FROM temp.entry_totals_state;"
		 "DELETE FROM temp.entry_totals;"
		 "INSERT INTO temp.entry_totals (host, files, bytes) "
		 "SELECT host, count(*), coalesce(sum(size), 0) FROM main.entries "
		 "WHERE deleted = 0 GROUP BY host;"
		 "INSERT INTO temp.entry_totals_state (data_version) VALUES (%lld);"
		 "RELEASE totals_count;",
		 (long long)now);
	rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "count entries");
		if (!sqlite3_get_autocommit(cat->db))
			sqlite3_exec(cat->db, "ROLLBACK TO totals_count; RELEASE totals_count",
				     NULL, NULL, NULL);
	}
out:
	return ret;
}

int catalog_max_seq(struct catalog *cat, const char *host, int64_t *seq)
{
	int64_t v = 0;
	int ret = -EINVAL;

	if (!host || !seq)
		goto out;
	ret = query_row(cat, ST_MAX_SEQ, host, &v, NULL);
	if (ret == 0)
		*seq = v;
out:
	return ret;
}

/* @host NULL counts every host, as catalog_foreach does. */
int catalog_totals(struct catalog *cat, const char *host, uint64_t *files, uint64_t *bytes)
{
	int64_t f = 0, b = 0;
	int ret;

	ret = catalog_lock(cat);
	if (ret)
		goto out;
	ret = totals_fresh(cat);
	if (ret == 0)
		ret = query_row_locked(cat, host ? ST_TOTALS_HOST : ST_TOTALS_ALL, host, &f, &b,
				       NULL);
	catalog_unlock(cat);
	if (ret == 0) {
		if (files)
			*files = (uint64_t)f;
		if (bytes)
			*bytes = (uint64_t)b;
	}
out:
	return ret;
}

/* Pins may name a file, a directory, or with path "" the whole category. */
static bool valid_pin_key(const char *category, const char *path)
{
	return catalog_valid_category(category) && path && (!*path || path_is_clean_relative(path));
}

int catalog_set_pin(struct catalog *cat, const char *category, const char *path, bool pinned)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!valid_pin_key(category, path))
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, pinned ? ST_PIN_SET : ST_PIN_CLEAR, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, category, &rc);
	catalog_bind_text(st, 2, path, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_get_pin(struct catalog *cat, const char *category, const char *path, bool *pinned)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!category || !path || !pinned)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_PIN_GET, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, category, &rc);
	catalog_bind_text(st, 2, path, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*pinned = sqlite3_column_int(st, 0) != 0;
	else if (rc == SQLITE_DONE)
		*pinned = false;
	else
		ret = catalog_sql_fail(cat, rc, "get pin");
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

/* *value is a new string (free()); -ENOENT when @key was never set. */
int catalog_meta_get(struct catalog *cat, const char *key, char **value)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!key || !value)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_META_GET, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, key, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *v = (const char *)sqlite3_column_text(st, 0);
		char *copy = strdup(v ? v : "");

		if (copy)
			*value = copy;
		else
			ret = -ENOMEM;
	} else if (rc == SQLITE_DONE) {
		ret = -ENOENT;
	} else {
		ret = catalog_sql_fail(cat, rc, "meta get");
	}
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_meta_set(struct catalog *cat, const char *key, const char *value)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!key || !*key || !value)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = stmt_get(cat, ST_META_SET, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, key, &rc);
	catalog_bind_text(st, 2, value, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	stmt_put(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}
