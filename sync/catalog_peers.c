/*
 * catalog_peers — the catalog's side of other hosts' manifests: where this node is in each
 * host's manifest (hosts.last_seq / last_seen), applying a batch of a host's entries, forgetting
 * a host whose catalog was replaced, and walking every remote entry at start.
 *
 * How it works:
 * - catalog_apply_remote validates the whole batch before it touches the database, then runs one
 *   BEGIN IMMEDIATE transaction: per live entry an upsert on (host, category, path) that keeps
 *   the row id (so a "chunks" row can only belong to the version it was fetched for, the old
 *   chunk list is dropped first unless the content (hash and size) is the same), per deleted
 *   entry a tombstone update; finally the host's position. A crash leaves the batch either
 *   applied with its position or not at all, so a pull resumes exactly where it left off.
 * - A delete for an entry the catalog never had is ignored: nothing here would show it, and the
 *   position (hosts.last_seq) already records that the seq was seen, so no tombstone row is
 *   made up (it would need a hash and size that we do not have).
 * - This node's own row in hosts is its seq counter (catalog_next_seq), so these functions
 *   refuse the node the catalog was made for (meta "node") with -EINVAL.
 * - The statements are few and run once per batch, so they are prepared per call rather than
 *   cached in catalog.c's table (which is private to catalog.c).
 *
 * Locking as in catalog.c: every exported call takes cat->lock for its whole work and releases
 * it before returning; catalog_foreach_remote's callback runs with it held.
 */
#include "sync/catalog.h"
#include "sync/catalog_int.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "sync/log.h"
#include "sync/util.h"

static const char sql_host_get[] = "SELECT last_seq, last_seen FROM hosts WHERE name = ?1";

static const char sql_self[] = "SELECT value FROM meta WHERE key = 'node'";

/* The chunks of the current row go unless it is a live row with the same content. */
static const char sql_live_chunks_clear[] =
	"DELETE FROM chunks WHERE entry_id = (SELECT id FROM entries "
	"WHERE host = ?1 AND category = ?2 AND path = ?3 "
	"AND (deleted != 0 OR size != ?4 OR hash != ?5))";

const char catalog_sql_foreign_upsert[] =
	"INSERT INTO entries (host, category, path, size, mtime_ns, hash, origin, seq, deleted, "
	"dev, ino, ctime_ns, confirmed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, 0, 0, ?9) "
	"ON CONFLICT (host, category, path) DO UPDATE SET size = excluded.size, "
	"mtime_ns = excluded.mtime_ns, hash = excluded.hash, origin = excluded.origin, "
	"seq = excluded.seq, deleted = 0, dev = 0, ino = 0, ctime_ns = 0, "
	"confirmed_at = excluded.confirmed_at RETURNING id";

void catalog_bind_foreign_row(sqlite3_stmt *st, const struct cat_entry *e, int64_t seq,
			      int64_t confirmed_at, int *rc)
{
	catalog_bind_text(st, 1, e->host, rc);
	catalog_bind_text(st, 2, e->category, rc);
	catalog_bind_text(st, 3, e->path, rc);
	catalog_bind_int(st, 4, (int64_t)e->size, rc);
	catalog_bind_int(st, 5, e->mtime_ns, rc);
	catalog_bind_hash(st, 6, &e->hash, rc);
	catalog_bind_text(st, 7, e->origin, rc);
	catalog_bind_int(st, 8, seq, rc);
	catalog_bind_int(st, 9, confirmed_at, rc);
}

static const char sql_del_chunks_clear[] =
	"DELETE FROM chunks WHERE entry_id = (SELECT id FROM entries "
	"WHERE host = ?1 AND category = ?2 AND path = ?3)";

static const char sql_del_mark[] =
	"UPDATE entries SET deleted = 1, seq = ?4, confirmed_at = ?5 "
	"WHERE host = ?1 AND category = ?2 AND path = ?3";

static const char sql_host_set[] =
	"INSERT INTO hosts (name, last_seq, last_seen) VALUES (?1, ?2, ?3) "
	"ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq, "
	"last_seen = excluded.last_seen";

/* Chunks go with their entries (ON DELETE CASCADE). */
static const char sql_reset_entries[] = "DELETE FROM entries WHERE host = ?1";

static const char sql_reset_pos[] =
	"INSERT INTO hosts (name, last_seq, last_seen) VALUES (?1, 0, 0) "
	"ON CONFLICT (name) DO UPDATE SET last_seq = 0";

static const char sql_foreach_remote[] = "SELECT " CATALOG_ENTRY_COLS " FROM entries "
					 "WHERE host != ?1 AND deleted = 0 ORDER BY host, seq";

enum { ST_LIVE_CHUNKS, ST_LIVE_UPSERT, ST_DEL_CHUNKS, ST_DEL_MARK, ST_HOST_SET, ST_APPLY_COUNT };

/* Binds ?1 = @host and steps @st to completion, for the one-parameter statements. */
static int run_host_stmt(struct catalog *cat, const char *sql, const char *host)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = catalog_prepare(cat, sql, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
out:
	sqlite3_finalize(st);
	return ret;
}

/*
 * -EINVAL (logged) when @host is the node this catalog was made for: its hosts row is the seq
 * counter of its own publications, not a position in someone's manifest. Lock held.
 */
static int refuse_self(struct catalog *cat, const char *host, const char *what)
{
	sqlite3_stmt *st = NULL;
	const char *self;
	int rc, ret;

	ret = catalog_prepare(cat, sql_self, &st);
	if (ret)
		goto out;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		self = (const char *)sqlite3_column_text(st, 0);
		if (self && strcmp(self, host) == 0) {
			log_msg(LOG_ERR, "catalog %s: %s refused for this node's own host %s",
				cat->path, what, host);
			ret = -EINVAL;
		}
	} else if (rc != SQLITE_DONE) {
		ret = catalog_sql_fail(cat, rc, "read node identity");
	}
out:
	sqlite3_finalize(st);
	return ret;
}

int catalog_host_get(struct catalog *cat, const char *host, int64_t *last_seq,
		     int64_t *last_seen)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int64_t seq = 0, seen = 0;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!cat || !host || !*host)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_host_get, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		seq = sqlite3_column_int64(st, 0);
		seen = sqlite3_column_int64(st, 1);
	} else if (rc != SQLITE_DONE) {
		ret = catalog_sql_fail(cat, rc, "host position");
		goto out;
	}
	if (last_seq)
		*last_seq = seq;
	if (last_seen)
		*last_seen = seen;
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

/* What catalog_apply_remote accepts of one entry (see catalog.h). */
static bool valid_remote_entry(const char *host, const struct cat_entry *e, int64_t last_seq)
{
	if (!e->host || strcmp(e->host, host) != 0 ||
	    !catalog_valid_key(e->host, e->category, e->path) || e->seq <= 0 || e->seq > last_seq)
		return false;
	if (e->deleted)
		return true;
	return e->origin && *e->origin && e->size <= (uint64_t)INT64_MAX;
}

static int apply_live(struct catalog *cat, sqlite3_stmt **sts, const struct cat_entry *e,
		      int64_t seen)
{
	sqlite3_stmt *st = sts[ST_LIVE_CHUNKS];
	int rc = SQLITE_OK, ret;

	catalog_bind_text(st, 1, e->host, &rc);
	catalog_bind_text(st, 2, e->category, &rc);
	catalog_bind_text(st, 3, e->path, &rc);
	catalog_bind_int(st, 4, (int64_t)e->size, &rc);
	catalog_bind_hash(st, 5, &e->hash, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
	sqlite3_reset(st);
	if (ret)
		goto out;

	st = sts[ST_LIVE_UPSERT];
	catalog_bind_foreign_row(st, e, e->seq, seen, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
	sqlite3_reset(st);
out:
	return ret;
}

static int apply_deleted(struct catalog *cat, sqlite3_stmt **sts, const struct cat_entry *e,
			 int64_t seen)
{
	sqlite3_stmt *st = sts[ST_DEL_CHUNKS];
	int rc = SQLITE_OK, ret;

	catalog_bind_text(st, 1, e->host, &rc);
	catalog_bind_text(st, 2, e->category, &rc);
	catalog_bind_text(st, 3, e->path, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
	sqlite3_reset(st);
	if (ret)
		goto out;

	st = sts[ST_DEL_MARK];
	catalog_bind_text(st, 1, e->host, &rc);
	catalog_bind_text(st, 2, e->category, &rc);
	catalog_bind_text(st, 3, e->path, &rc);
	catalog_bind_int(st, 4, e->seq, &rc);
	catalog_bind_int(st, 5, seen, &rc);
	ret = catalog_stmt_run_bound(cat, st, rc);
	sqlite3_reset(st);
out:
	return ret;
}

int catalog_apply_remote(struct catalog *cat, const char *host, const struct cat_entry *entries,
			 size_t n, int64_t last_seq, int64_t seen)
{
	static const char *const sql[ST_APPLY_COUNT] = {
		[ST_LIVE_CHUNKS] = sql_live_chunks_clear,
		[ST_LIVE_UPSERT] = catalog_sql_foreign_upsert,
		[ST_DEL_CHUNKS] = sql_del_chunks_clear,
		[ST_DEL_MARK] = sql_del_mark,
		[ST_HOST_SET] = sql_host_set,
	};
	sqlite3_stmt *sts[ST_APPLY_COUNT] = { NULL };
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!cat || !host || !*host || (n && !entries) || last_seq < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (!valid_remote_entry(host, &entries[i], last_seq)) {
			log_msg(LOG_ERR, "catalog %s: refusing %s's batch: entry %zu (seq %lld) is "
				"invalid", cat->path, host, i, (long long)entries[i].seq);
			goto out;
		}
	}

	ret = catalog_write_begin(cat);
	if (ret)
		goto out;
	ret = refuse_self(cat, host, "applying a manifest");
	for (size_t i = 0; ret == 0 && i < ST_APPLY_COUNT; i++)
		ret = catalog_prepare(cat, sql[i], &sts[i]);
	for (size_t i = 0; ret == 0 && i < n; i++) {
		const struct cat_entry *e = &entries[i];

		ret = e->deleted ? apply_deleted(cat, sts, e, seen) : apply_live(cat, sts, e, seen);
	}
	if (ret == 0) {
		catalog_bind_text(sts[ST_HOST_SET], 1, host, &rc);
		catalog_bind_int(sts[ST_HOST_SET], 2, last_seq, &rc);
		catalog_bind_int(sts[ST_HOST_SET], 3, seen, &rc);
		ret = catalog_stmt_run_bound(cat, sts[ST_HOST_SET], rc);
	}
	for (size_t i = 0; i < ST_APPLY_COUNT; i++)
		sqlite3_finalize(sts[i]);
	ret = catalog_write_end(cat, ret);
out:
	return ret;
}

int catalog_reset_host(struct catalog *cat, const char *host)
{
	int ret = -EINVAL;

	if (!cat || !host || !*host)
		goto out;
	ret = catalog_write_begin(cat);
	if (ret)
		goto out;
	ret = refuse_self(cat, host, "reset");
	if (ret == 0)
		ret = run_host_stmt(cat, sql_reset_entries, host);
	if (ret == 0)
		ret = run_host_stmt(cat, sql_reset_pos, host);
	ret = catalog_write_end(cat, ret);
out:
	return ret;
}

int catalog_foreach_remote(struct catalog *cat, const char *self_host,
			   int (*fn)(void *arg, const struct cat_entry *e), void *arg)
{
	sqlite3_stmt *st = NULL;
	bool locked = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!cat || !self_host || !fn)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_prepare(cat, sql_foreach_remote, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, self_host, &rc);
	if (rc != SQLITE_OK) {
		ret = catalog_sql_fail(cat, rc, "bind");
		goto out;
	}
	ret = catalog_walk(cat, st, fn, arg);
out:
	sqlite3_finalize(st);
	if (locked)
		catalog_unlock(cat);
	return ret;
}
