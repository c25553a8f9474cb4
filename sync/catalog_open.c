/*
 * catalog_open — opening and closing the catalog: the connection, its settings, the schema and
 * its migrations. The rest of the catalog (catalog.c, catalog_*.c) takes an open struct catalog
 * for granted; what they share is in catalog_int.h.
 *
 * How it works:
 * - One connection per struct catalog, in WAL mode (readers never block the writer, and a
 *   kill -9 loses at most the transaction in flight), synchronous=NORMAL (durable against a
 *   process crash; a power cut may lose the last commits but never corrupts), foreign keys on
 *   (chunks go with their entry) and a busy timeout so another process holding the write lock
 *   briefly is waited for instead of failing.
 * - The schema version is PRAGMA user_version. catalog_open applies each missing step of
 *   `migrations` in order, each in its own BEGIN IMMEDIATE transaction that also bumps
 *   user_version, so a crash mid-migration leaves the previous version intact. The version is
 *   re-read under the write lock, so two processes opening an old catalog at once migrate it
 *   once. A catalog newer than this build, a file that is not SQLite, or an SQLite file with
 *   someone else's tables (or application_id) is refused with -EPROTO.
 * - Opening never hands out a catalog it could not write: SQLite's silent fall back to
 *   read-only is refused, and a file or directory that cannot be written is named with the
 *   errno access() gives for it.
 * - The per-host totals (see catalog.c's header) are TEMP objects of this connection, made
 *   after the migrations on every open; nothing of them is in the file.
 *
 * Locking: catalog_open and catalog_close run before and after any other use of the struct
 * catalog, so they take no lock; cat->lock is created and destroyed here.
 */
#include "sync/catalog.h"
#include "sync/catalog_int.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sync/log.h"

/* PRAGMA application_id of a meshfs catalog: 0x6d736866, "mshf". Decimal for the SQL. */
#define CATALOG_APP_ID 1836279910
#define STR_(x) #x
#define STR(x) STR_(x)
#define CATALOG_BUSY_TIMEOUT_MS 10000

/*
 * Version 1: hosts, entries, chunks, meta. entries keeps one row per (host, category, path):
 * the current version, or its tombstone (deleted = 1) so deletions travel in manifests.
 */
static const char schema_v1[] =
	"CREATE TABLE meta ("
	"  key TEXT PRIMARY KEY,"
	"  value TEXT NOT NULL);"
	"CREATE TABLE hosts ("
	"  name TEXT PRIMARY KEY,"
	"  last_seq INTEGER NOT NULL DEFAULT 0,"
	"  last_seen INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE entries ("
	"  id INTEGER PRIMARY KEY,"
	"  host TEXT NOT NULL,"
	"  category TEXT NOT NULL,"
	"  path TEXT NOT NULL,"
	"  size INTEGER NOT NULL CHECK (size >= 0),"
	"  mtime_ns INTEGER NOT NULL,"
	"  hash BLOB NOT NULL CHECK (length(hash) = 16),"
	"  origin TEXT NOT NULL,"
	"  seq INTEGER NOT NULL,"
	"  deleted INTEGER NOT NULL DEFAULT 0,"
	"  dev INTEGER NOT NULL DEFAULT 0,"
	"  ino INTEGER NOT NULL DEFAULT 0,"
	"  ctime_ns INTEGER NOT NULL DEFAULT 0,"
	"  confirmed_at INTEGER NOT NULL DEFAULT 0,"
	"  UNIQUE (host, category, path));"
	"CREATE INDEX entries_host_seq ON entries (host, seq);"
	"CREATE TABLE chunks ("
	"  entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,"
	"  idx INTEGER NOT NULL,"
	"  hash BLOB NOT NULL CHECK (length(hash) = 16),"
	"  PRIMARY KEY (entry_id, idx)) WITHOUT ROWID;"
	"PRAGMA application_id = " STR(CATALOG_APP_ID) ";";

/*
 * Version 2: local holds what is present on this node per (category, path): the version hash
 * it belongs to, a bitmap of verified chunks (bit i of byte i / 8, LSB first), and the pin.
 * queue holds sync jobs; priority 0 low .. 3 critical, state queued/running/done/failed.
 */
static const char schema_v2[] =
	"CREATE TABLE local ("
	"  category TEXT NOT NULL,"
	"  path TEXT NOT NULL,"
	"  hash BLOB CHECK (hash IS NULL OR length(hash) = 16),"
	"  present BLOB,"
	"  cached_bytes INTEGER NOT NULL DEFAULT 0,"
	"  synced_at INTEGER,"
	"  last_access INTEGER,"
	"  pinned INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT,"
	"  PRIMARY KEY (category, path));"
	"CREATE TABLE queue ("
	"  id INTEGER PRIMARY KEY,"
	"  category TEXT NOT NULL,"
	"  path TEXT NOT NULL,"
	"  host TEXT,"
	"  priority INTEGER NOT NULL DEFAULT 1,"
	"  state TEXT NOT NULL DEFAULT 'queued',"
	"  created_at INTEGER NOT NULL,"
	"  attempts INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT);"
	"CREATE INDEX queue_pick ON queue (state, priority DESC, id);";

/*
 * Version 3: the cache (sync/cache.c) keeps a version's size and its chunk hashes (16 bytes
 * each, hash_to_bytes form, in chunk order) beside the present bitmap, so a partial copy can be
 * resumed and re-verified after a restart without the entries of the host it came from (which
 * may have moved on). Rows of one version are updated together, by hash.
 */
static const char schema_v3[] =
	"ALTER TABLE local ADD COLUMN size INTEGER CHECK (size IS NULL OR size >= 0);"
	"ALTER TABLE local ADD COLUMN chunks BLOB;"
	"CREATE INDEX local_hash ON local (hash);";

/*
 * Version 4: a chunk of more than one 64 KiB block keeps its block hashes (16 bytes each,
 * hash_to_bytes form, in block order), so the data server can vouch for a few blocks and a
 * reader need not wait for the whole chunk. NULL: not known (published before version 4, or a
 * chunk of one block, whose block hash is the chunk hash).
 */
static const char schema_v4[] =
	"ALTER TABLE chunks ADD COLUMN blocks BLOB;";

/*
 * Connection-private, created by catalog_open after the migrations (see catalog.c's header).
 * entry_totals_state holds the data_version the totals were counted at; no row: never counted.
 */
static const char totals_sql[] =
	"CREATE TEMP TABLE entry_totals ("
	"  host TEXT PRIMARY KEY,"
	"  files INTEGER NOT NULL,"
	"  bytes INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TEMP TABLE entry_totals_state (data_version INTEGER NOT NULL);"
	"CREATE TEMP TRIGGER entry_totals_insert AFTER INSERT ON main.entries "
	"WHEN NEW.deleted = 0 BEGIN "
	"  INSERT INTO entry_totals (host, files, bytes) VALUES (NEW.host, 1, NEW.size) "
	"  ON CONFLICT (host) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes; "
	"END;"
	"CREATE TEMP TRIGGER entry_totals_delete AFTER DELETE ON main.entries "
	"WHEN OLD.deleted = 0 BEGIN "
	"  UPDATE entry_totals SET files = files - 1, bytes = bytes - OLD.size "
	"  WHERE host = OLD.host; "
	"END;"
	"CREATE TEMP TRIGGER entry_totals_update AFTER UPDATE OF host, size, deleted "
	"ON main.entries WHEN OLD.deleted = 0 OR NEW.deleted = 0 BEGIN "
	"  UPDATE entry_totals SET files = files - 1, bytes = bytes - OLD.size "
	"  WHERE host = OLD.host AND OLD.deleted = 0; "
	"  INSERT INTO entry_totals (host, files, bytes) SELECT NEW.host, 1, NEW.size "
	"  WHERE NEW.deleted = 0 "
	"  ON CONFLICT (host) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes; "
	"END;";

struct migration {
	int version; /* user_version after this step */
	const char *sql;
};

static const struct migration migrations[] = {
	{ 1, schema_v1 },
	{ 2, schema_v2 },
	{ 3, schema_v3 },
	{ 4, schema_v4 },
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == CATALOG_SCHEMA_VERSION,
	       "one migration per schema version");

int catalog_schema_version(struct catalog *cat)
{
	return cat->version;
}

/*
 * Why a catalog cannot be written: the errno of the first of the file and its directory (WAL
 * creates -wal and -shm beside the file) that access() finds unwritable, else 0.
 */
static int probe_unwritable(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = NULL;
	int ret = 0;

	if (access(path, F_OK) == 0 && access(path, R_OK | W_OK) < 0) {
		ret = -errno;
		goto out;
	}
	if (!slash)
		dir = strdup(".");
	else
		dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
	if (!dir) {
		ret = -ENOMEM;
		goto out;
	}
	if (access(dir, W_OK | X_OK) < 0)
		ret = -errno;
out:
	free(dir);
	return ret;
}

/* Like sql_fail, with what a failure means while opening: not ours, or not writable. */
static int open_fail(struct catalog *cat, int rc, const char *what)
{
	int ret;

	switch (rc & 0xff) {
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		log_msg(LOG_ERR, "catalog %s: not a usable SQLite database (%s): %s", cat->path,
			what, sqlite3_errmsg(cat->db));
		ret = -EPROTO;
		break;
	case SQLITE_CANTOPEN:
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		ret = probe_unwritable(cat->path);
		if (ret == 0)
			ret = catalog_sqlite_to_errno(cat->db, rc);
		log_msg(LOG_ERR, "catalog %s: cannot open for writing (%s): %s", cat->path, what,
			strerror(-ret));
		break;
	default:
		ret = catalog_sql_fail(cat, rc, what);
		break;
	}
	return ret;
}

static int exec_sql(struct catalog *cat, const char *sql)
{
	int rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : open_fail(cat, rc, sql);
}

/* Reads the integer result of a one-row statement such as "PRAGMA user_version". */
static int query_int(struct catalog *cat, const char *sql, int64_t *v)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = 0;

	rc = sqlite3_prepare_v2(cat->db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*v = sqlite3_column_int64(st, 0);
	else
		ret = open_fail(cat, rc, sql);
	sqlite3_finalize(st);
	return ret;
}

/* Rejects SQLite files that are not meshfs catalogs or are newer than this build. */
static int check_identity(struct catalog *cat, int64_t *version)
{
	int64_t app_id = 0, objects = 0;
	int ret;

	ret = query_int(cat, "PRAGMA user_version", version);
	if (ret)
		goto out;
	ret = query_int(cat, "PRAGMA application_id", &app_id);
	if (ret)
		goto out;
	ret = -EPROTO;
	if (app_id != 0 && app_id != CATALOG_APP_ID) {
		log_msg(LOG_ERR, "catalog %s: SQLite database of another application (id %#llx)",
			cat->path, (unsigned long long)app_id);
		goto out;
	}
	if (*version > CATALOG_SCHEMA_VERSION || *version < 0) {
		log_msg(LOG_ERR,
			"catalog %s: schema version %lld is newer than this meshfs understands "
			"(%d); upgrade meshfs or move the catalog away",
			cat->path, (long long)*version, CATALOG_SCHEMA_VERSION);
		goto out;
	}
	ret = query_int(cat, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
			&objects);
	if (ret)
		goto out;
	if (*version == 0 && objects > 0) {
		log_msg(LOG_ERR, "catalog %s: SQLite database with tables but no catalog version",
			cat->path);
		ret = -EPROTO;
		goto out;
	}
	ret = 0;
out:
	return ret;
}

/* Applies the missing migrations, each in its own transaction. */
static int migrate(struct catalog *cat, int64_t *version)
{
	bool in_tx = false;
	char bump[64];
	int ret = 0;

	for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
		const struct migration *m = &migrations[i];
		int64_t cur = 0;

		if (*version >= m->version)
			continue;
		ret = exec_sql(cat, "BEGIN IMMEDIATE");
		if (ret)
			goto out;
		in_tx = true;
		/* Another process may have migrated while we waited for the write lock. */
		ret = query_int(cat, "PRAGMA user_version", &cur);
		if (ret)
			goto out;
		if (cur > CATALOG_SCHEMA_VERSION) {
			log_msg(LOG_ERR, "catalog %s: migrated to version %lld by a newer meshfs",
				cat->path, (long long)cur);
			ret = -EPROTO;
			goto out;
		}
		if (cur < m->version) {
			ret = exec_sql(cat, m->sql);
			if (ret)
				goto out;
			snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", m->version);
			ret = exec_sql(cat, bump);
			if (ret)
				goto out;
		}
		ret = exec_sql(cat, "COMMIT");
		if (ret)
			goto out;
		in_tx = false;
		if (cur < m->version)
			log_msg(LOG_INFO, "catalog %s: schema migrated to version %d", cat->path,
				m->version);
		*version = cur > m->version ? cur : m->version;
	}
out:
	if (in_tx && !sqlite3_get_autocommit(cat->db))
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
	return ret;
}

static int set_pragmas(struct catalog *cat)
{
	sqlite3_stmt *st = NULL;
	const char *mode;
	int rc, ret;

	rc = sqlite3_prepare_v2(cat->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		ret = open_fail(cat, rc, "PRAGMA journal_mode = WAL");
		goto out;
	}
	mode = (const char *)sqlite3_column_text(st, 0);
	/* Still crash-safe with a rollback journal, only readers then block the writer. An
	 * in-memory catalog (":memory:", for tests) has no journal to speak of. */
	if (!mode || (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0))
		log_msg(LOG_WARNING, "catalog %s: WAL mode unavailable, journal mode is %s",
			cat->path, mode ? mode : "unknown");
	ret = exec_sql(cat, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON");
out:
	sqlite3_finalize(st);
	return ret;
}

int catalog_open(const char *path, struct catalog **out)
{
	pthread_mutexattr_t attr;
	struct catalog *cat = NULL;
	int64_t version = 0;
	int rc, ret = -EINVAL;

	if (!path || !*path || !out)
		goto out;
	ret = -ENOMEM;
	cat = calloc(1, sizeof(*cat) + catalog_n_stmts * sizeof(cat->stmts[0]));
	if (!cat)
		goto out;
	cat->path = strdup(path);
	if (!cat->path) {
		free(cat);
		cat = NULL;
		goto out;
	}
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
	rc = pthread_mutex_init(&cat->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	if (rc) {
		ret = -rc;
		free(cat->path);
		free(cat);
		cat = NULL;
		goto out;
	}

	/* NOMUTEX: cat->lock already serialises every use of the connection. */
	rc = sqlite3_open_v2(path, &cat->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		ret = open_fail(cat, rc, "open");
		goto out;
	}
	/* SQLite silently falls back to read-only when the file is not writable. */
	if (sqlite3_db_readonly(cat->db, "main") == 1) {
		ret = open_fail(cat, SQLITE_READONLY, "open");
		goto out;
	}
	sqlite3_busy_timeout(cat->db, CATALOG_BUSY_TIMEOUT_MS);
	ret = check_identity(cat, &version);
	if (ret)
		goto out;
	ret = set_pragmas(cat);
	if (ret)
		goto out;
	ret = migrate(cat, &version);
	if (ret)
		goto out;
	ret = exec_sql(cat, totals_sql);
	if (ret)
		goto out;
	cat->version = (int)version;
	log_msg(LOG_DEBUG, "catalog %s: open, schema version %d", path, cat->version);
	*out = cat;
	cat = NULL;
out:
	catalog_close(cat);
	return ret;
}

void catalog_close(struct catalog *cat)
{
	int rc;

	if (!cat)
		return;
	for (size_t i = 0; i < catalog_n_stmts; i++)
		sqlite3_finalize(cat->stmts[i]);
	sqlite3_finalize(cat->blocks_stmt);
	rc = sqlite3_close(cat->db);
	if (rc != SQLITE_OK)
		log_msg(LOG_ERR, "catalog %s: close: %s", cat->path, sqlite3_errstr(rc));
	pthread_mutex_destroy(&cat->lock);
	free(cat->path);
	free(cat);
}
