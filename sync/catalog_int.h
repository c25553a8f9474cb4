/*
 * catalog_int — what the catalog's own source files share: the connection and the helpers
 * around it. Only sync/catalog*.c include this; every other module uses catalog.h.
 *
 * The rules of catalog.c hold for every file: each exported call takes cat->lock with
 * catalog_lock(), does its work (one transaction for any change) and releases it before
 * returning; callbacks run with the lock held.
 */
#ifndef MESHFS_CATALOG_INT_H
#define MESHFS_CATALOG_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/catalog.h"

/* The entry columns, in the order catalog_row_to_entry() reads them. */
#define CATALOG_ENTRY_COLS                                                                  \
	"host, category, path, size, mtime_ns, hash, origin, seq, deleted, dev, ino, "      \
	"ctime_ns, confirmed_at"

struct catalog {
	pthread_mutex_t lock;		/* error-checking; see catalog.c's file header */
	sqlite3 *db;			/* protected by lock */
	int version;			/* set by catalog_open, read-only afterwards */
	char *path;			/* read-only, for messages */
	sqlite3_stmt *blocks_stmt;	/* catalog_blocks.c's, kept: it is on a reader's path;
					 * protected by lock */
	sqlite3_stmt *stmts[];		/* catalog.c's prepared statements; protected by lock */
};

/* How many prepared statements catalog.c keeps in cat->stmts[]: catalog_open allocates that
 * many slots (NULL until first use) and catalog_close finalizes them. */
extern const size_t catalog_n_stmts;
/* SQLite result code -> -errno (keeping the OS error when SQLite saw one). */
int catalog_sqlite_to_errno(sqlite3 *db, int rc);
/* Logs the failure of @what and returns it as -errno. */
int catalog_sql_fail(struct catalog *cat, int rc, const char *what);
/* Prepares @sql (not cached: the caller finalizes *out). 0 or -errno (logged). */
int catalog_prepare(struct catalog *cat, const char *sql, sqlite3_stmt **out);
/* Takes / releases cat->lock; -EDEADLK when called from inside a callback. */
int catalog_lock(struct catalog *cat);
void catalog_unlock(struct catalog *cat);
/* Binders that do nothing once *rc holds an error, so a run of binds is checked once. */
void catalog_bind_text(sqlite3_stmt *st, int i, const char *s, int *rc);
void catalog_bind_int(sqlite3_stmt *st, int i, int64_t v, int *rc);
void catalog_bind_hash(sqlite3_stmt *st, int i, const struct hash128 *h, int *rc);
/* Steps @st to completion; 0 or -errno (logged). */
int catalog_stmt_run(struct catalog *cat, sqlite3_stmt *st);
/* catalog_stmt_run() once its binds went well (@rc, as the binders left it); else the bind
 * error (logged). */
int catalog_stmt_run_bound(struct catalog *cat, sqlite3_stmt *st, int rc);
/*
 * A write of several statements, in one transaction: catalog_write_begin() takes the lock and
 * runs BEGIN IMMEDIATE (0, or -errno with nothing held); catalog_write_end(), given what the
 * statements returned, commits when that is 0 and rolls back otherwise, unlocks, and returns
 * @ret or COMMIT's error.
 */
int catalog_write_begin(struct catalog *cat);
int catalog_write_end(struct catalog *cat, int ret);
bool catalog_valid_category(const char *category);
bool catalog_valid_key(const char *host, const char *category, const char *path);
/* Fills @e from a row selected with catalog.c's entry columns (see CATALOG_ENTRY_COLS). */
int catalog_row_to_entry(sqlite3_stmt *st, struct cat_entry *e);
/* Steps @st (selecting CATALOG_ENTRY_COLS) to the end, calling @fn for each row; stops at the
 * first non-zero return of @fn and returns it, or -errno (logged). */
int catalog_walk(struct catalog *cat, sqlite3_stmt *st,
		 int (*fn)(void *arg, const struct cat_entry *e), void *arg);
/*
 * The upsert of an entry whose origin is not this node's own data dir (another host's entry,
 * or this node's replica of one), "RETURNING id"; catalog_bind_foreign_row binds @e with @seq
 * and @confirmed_at. The row keeps its id (its chunks stay its own). In catalog_peers.c.
 */
extern const char catalog_sql_foreign_upsert[];
void catalog_bind_foreign_row(sqlite3_stmt *st, const struct cat_entry *e, int64_t seq,
			      int64_t confirmed_at, int *rc);
/* The next seq of @host, inside the caller's transaction. */
int catalog_next_seq(struct catalog *cat, const char *host, int64_t *seq);

#endif
