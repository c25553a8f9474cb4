/*
 * catalog_replicas — this node's complete copies of other hosts' versions, as manifest entries.
 *
 * A node that holds a complete, verified copy of a version another host produced lists it in
 * its own manifest: an entry of this host whose origin is the producer (docs/protocol.md). Other
 * nodes then count this node among the version's sources, fetch from it, and the producer sees
 * how many copies its data has (replication, sync/autosync.c). The entry takes the next seq of
 * this node like any publication, and goes (a tombstone with a new seq) when the copy goes.
 *
 * This node's own files win: a replica is never recorded over a live entry of this node's own
 * data at the same path, and a replica entry is never taken for a file of the data dirs (the
 * indexer and the namespace skip entries whose origin is another host).
 *
 * Locking as in catalog.c: each call takes cat->lock for its whole work, one transaction.
 */
#include <errno.h>
#include <string.h>

#include "sync/catalog_int.h"
#include "sync/hash.h"
#include "sync/log.h"

static const char sql_own_origin[] =
	"SELECT origin FROM entries WHERE host = ?1 AND category = ?2 AND path = ?3 "
	"AND deleted = 0";

static const char sql_chunks_clear[] = "DELETE FROM chunks WHERE entry_id = ?1";

static const char sql_chunk_insert[] =
	"INSERT INTO chunks (entry_id, idx, hash, blocks) VALUES (?1, ?2, ?3, NULL)";

static const char sql_drop[] =
	"UPDATE entries SET deleted = 1, seq = ?5 WHERE host = ?1 AND category = ?2 AND path = ?3 "
	"AND deleted = 0 AND origin != ?1 AND hash = ?4";

/* Runs the prepared, bound @sql statement @st to its end. */
static int run(struct catalog *cat, sqlite3_stmt *st, int rc)
{
	return rc == SQLITE_OK ? catalog_stmt_run(cat, st) : catalog_sql_fail(cat, rc, "bind");
}

/* Whether (host, category, path) is a live entry of the host's own data. Lock held. */
static int own_data_there(struct catalog *cat, const struct cat_entry *e, bool *own)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	*own = false;
	ret = catalog_prepare(cat, sql_own_origin, &st);
	if (ret)
		return ret;
	catalog_bind_text(st, 1, e->host, &rc);
	catalog_bind_text(st, 2, e->category, &rc);
	catalog_bind_text(st, 3, e->path, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *origin = (const char *)sqlite3_column_text(st, 0);

		*own = origin && strcmp(origin, e->host) == 0;
		ret = 0;
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	} else {
		ret = catalog_sql_fail(cat, rc, "look up replica path");
	}
	sqlite3_finalize(st);
	return ret;
}

/* Records the entry and its chunks inside the caller's transaction. */
static int put_replica(struct catalog *cat, const struct cat_entry *e,
		       const struct hash128 *chunks, size_t n_chunks, int64_t seq)
{
	sqlite3_stmt *st = NULL;
	int64_t id = 0;
	int rc = SQLITE_OK, ret;

	ret = catalog_prepare(cat, catalog_sql_foreign_upsert, &st);
	if (ret)
		goto out;
	catalog_bind_foreign_row(st, e, seq, e->confirmed_at, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		ret = catalog_sql_fail(cat, rc, "record replica");
		goto out;
	}
	id = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	st = NULL;

	ret = catalog_prepare(cat, sql_chunks_clear, &st);
	if (ret)
		goto out;
	rc = SQLITE_OK;
	catalog_bind_int(st, 1, id, &rc);
	ret = run(cat, st, rc);
	sqlite3_finalize(st);
	st = NULL;
	if (ret)
		goto out;
	ret = catalog_prepare(cat, sql_chunk_insert, &st);
	for (size_t i = 0; ret == 0 && i < n_chunks; i++) {
		rc = SQLITE_OK;
		catalog_bind_int(st, 1, id, &rc);
		catalog_bind_int(st, 2, (int64_t)i, &rc);
		catalog_bind_hash(st, 3, &chunks[i], &rc);
		ret = run(cat, st, rc);
		sqlite3_reset(st);
	}
out:
	sqlite3_finalize(st);
	return ret;
}

int catalog_publish_replica(struct catalog *cat, const struct cat_entry *e,
			    const struct hash128 *chunks, size_t n_chunks, int64_t *seq)
{
	bool locked = false, in_tx = false, own;
	int ret = -EINVAL;

	if (!e || !catalog_valid_key(e->host, e->category, e->path) || !e->origin ||
	    !*e->origin || strcmp(e->origin, e->host) == 0 || e->size > INT64_MAX ||
	    n_chunks != (e->size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE || (n_chunks && !chunks))
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_tx_begin(cat);
	if (ret)
		goto out;
	in_tx = true;
	ret = own_data_there(cat, e, &own);
	if (ret)
		goto out;
	if (own) {
		ret = -EEXIST;
		goto out;
	}
	ret = catalog_next_seq(cat, e->host, seq);
	if (ret)
		goto out;
	ret = put_replica(cat, e, chunks, n_chunks, *seq);
	if (ret)
		goto out;
	ret = catalog_tx_commit(cat);
	if (ret == 0)
		in_tx = false;
out:
	if (in_tx)
		catalog_tx_rollback(cat);
	if (locked)
		catalog_unlock(cat);
	return ret;
}

int catalog_drop_replica(struct catalog *cat, const char *host, const char *category,
			 const char *path, const struct hash128 *hash, int64_t *seq)
{
	sqlite3_stmt *st = NULL;
	bool locked = false, in_tx = false;
	int rc = SQLITE_OK, ret = -EINVAL;

	if (!catalog_valid_key(host, category, path) || !hash || !seq)
		goto out;
	ret = catalog_lock(cat);
	if (ret)
		goto out;
	locked = true;
	ret = catalog_tx_begin(cat);
	if (ret)
		goto out;
	in_tx = true;
	ret = catalog_next_seq(cat, host, seq);
	if (ret)
		goto out;
	ret = catalog_prepare(cat, sql_drop, &st);
	if (ret)
		goto out;
	catalog_bind_text(st, 1, host, &rc);
	catalog_bind_text(st, 2, category, &rc);
	catalog_bind_text(st, 3, path, &rc);
	catalog_bind_hash(st, 4, hash, &rc);
	catalog_bind_int(st, 5, *seq, &rc);
	ret = run(cat, st, rc);
	if (ret)
		goto out;
	if (sqlite3_changes(cat->db) == 0) {
		ret = -ENOENT; /* the seq taken is rolled back with the transaction */
		goto out;
	}
	ret = catalog_tx_commit(cat);
	if (ret == 0)
		in_tx = false;
out:
	sqlite3_finalize(st);
	if (in_tx)
		catalog_tx_rollback(cat);
	if (locked)
		catalog_unlock(cat);
	return ret;
}
