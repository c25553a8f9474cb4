/*
 * facade — `meshfs sync`: what the user asked to bring up to date, and whether it is.
 *
 * A request names a category (or all), optional board type / player count filters on file
 * base names (`*_<board>_<n>p*`), a priority and optionally one source host. The daemon
 * answers with what matched, what is local and verified, and every failure. In this version
 * every published file is this node's own (indexed and hashed here, so verified); files known
 * from other hosts, and any --host other than this node, fail with the reason, since transfers
 * between nodes arrive with the cluster layer.
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
