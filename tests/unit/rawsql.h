/*
 * rawsql — reading a catalog file behind the catalog's back, for the unit tests that check what
 * was really stored.
 */
#ifndef MESHFS_RAWSQL_H
#define MESHFS_RAWSQL_H

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>

/* The first column of the first row of @sql on the database at @path, or INT64_MIN on error. */
static inline int64_t raw_int(const char *path, const char *sql)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db = NULL;
	int64_t v = INT64_MIN;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	else
		fprintf(stderr, "raw_int %s: %s\n", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

#endif
