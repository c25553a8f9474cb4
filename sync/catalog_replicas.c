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
	ret = catalog_stmt_run_bound(cat, st, rc);
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
		ret = catalog_stmt_run_bound(cat, st, rc);
		sqlite3_reset(st);
	}
out:
	sqlite3_finalize(st);
	return ret;
}

/* catalog_publish_replica's statements, inside its transaction. */
static int publish_replica(struct catalog *cat, const struct cat_entry *e,
			   const struct hash128 *chunks, size_t n_chunks, int64_t *seq)
{
	bool own;
	int ret = own_data_there(cat, e, &own);

	if (ret == 0 && own)
		ret = -EEXIST;
	if (ret == 0)
		ret = catalog_next_seq(cat, e->host, seq);
	if (ret == 0)
		ret = put_replica(cat, e, chunks, n_chunks, *seq);
	return ret;
}

int catalog_publish_replica(struct catalog *cat, const struct cat_entry *e,
			    const struct hash128 *chunks, size_t n_chunks, int64_t *seq)
{
	int ret = -EINVAL;

	if (!e || !catalog_valid_key(e->host, e->category, e->path) || !e->origin ||
	    !*e->origin || strcmp(e->origin, e->host) == 0 || e->size > INT64_MAX ||
	    n_chunks != (e->size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE || (n_chunks && !chunks))
		goto out;
	ret = catalog_write_begin(cat);
	if (ret == 0)
		ret = catalog_write_end(cat, publish_replica(cat, e, chunks, n_chunks, seq));
out:
	return ret;
}

/* catalog_drop_replica's statements, inside its transaction. */
static int drop_replica(struct catalog *cat, const char *host, const char *category,
			const char *path, const struct hash128 *hash, int64_t *seq)
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, ret;

	ret = catalog_next_seq(cat, host, seq);
	if (ret == 0)
		ret = catalog_prepare(cat, sql_drop, &st);
	if (ret == 0) {
		catalog_bind_text(st, 1, host, &rc);
		catalog_bind_text(st, 2, category, &rc);
		catalog_bind_text(st, 3, path, &rc);
		catalog_bind_hash(st, 4, hash, &rc);
		catalog_bind_int(st, 5, *seq, &rc);
		ret = catalog_stmt_run_bound(cat, st, rc);
	}
	if (ret == 0 && sqlite3_changes(cat->db) == 0)
		ret = -ENOENT; /* the seq taken is rolled back with the transaction */
	sqlite3_finalize(st);
	return ret;
}

int catalog_drop_replica(struct catalog *cat, const char *host, const char *category,
			 const char *path, const struct hash128 *hash, int64_t *seq)
{
	int ret = -EINVAL;

	if (!catalog_valid_key(host, category, path) || !hash || !seq)
		goto out;
	ret = catalog_write_begin(cat);
	if (ret == 0)
		ret = catalog_write_end(cat, drop_replica(cat, host, category, path, hash, seq));
out:
	return ret;
}
