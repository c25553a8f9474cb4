/*
 * facade — `meshfs sync`: what the user asked to bring up to date, and whether it is.
 *
 * A request names a category (or all), optional board type / player count filters on file
 * base names (`*_<board>_<n>p*`), a priority and optionally one source host. The daemon
 * answers with what matched, what is local and verified, and every failure. This node's own
 * files are verified (indexed and hashed here). Files known from other hosts are fetched when
 * read or prefetched (user.meshfs.prefetch); making `meshfs sync` fetch and wait for them is the
 * AutoSync issue's, so today they are reported as failures with that reason, as is a --host
 * that was never reached.
 */
#ifndef MESHFS_FACADE_H
#define MESHFS_FACADE_H

#include <jansson.h>
#include <stdbool.h>

struct daemon;

/* The daemon side: answers @req ({"cmd":"sync", "what":..., "board_type":..., ...}) with
 * {"files", "bytes", "verified_files", "verified_bytes", "failed": [{"path","host","error"}]}
 * or {"error": "..."} for a bad request. */
json_t *facade_sync(struct daemon *d, json_t *req);

/* True when base name @name matches the board/players filter (NULL/0 = any). */
bool facade_name_matches(const char *name, const char *board_type, int num_players);

#endif
