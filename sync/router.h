/*
 * router — who does what: the strategy in effect, what a role fetches ahead, and which hosts
 * keep the replicas of an ephemeral host's file.
 *
 * Pure functions of the config (and of what the caller knows of the peers), so every node
 * comes to the same answers without asking anyone. Replica targets are chosen by rendezvous
 * hashing: each eligible host gets a score from XXH3 of (host name, path, version hash), and the
 * replication_target highest scores take the file. A file's replicas thus spread over the hosts,
 * a host that joins or leaves moves only the files it wins or held, and when a chosen host is
 * known to be down the next one in the order takes its place.
 */
#ifndef MESHFS_ROUTER_H
#define MESHFS_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/config.h"
#include "sync/hash.h"

struct shared;

/* The strategy in effect for @host: `auto` resolves to ephemeral for an ephemeral host,
 * broadcast for a host whose role publishes models, hybrid otherwise. */
enum cfg_strategy router_strategy(const struct mfs_config *cfg, const struct cfg_host *host);

/* Whether @role publishes models: contains "training_primary", or is "coordinator". */
bool router_publishes_models(const char *role);

/* What a host of role @role fetches ahead of reads (hybrid), per category name. */
enum router_want {
	ROUTER_WANT_NONE,
	ROUTER_WANT_NEWEST,	/* only the newest few files (models) */
	ROUTER_WANT_ALL,
};
enum router_want router_role_wants(const char *role, const char *category);

/* Whether @host is in sync_routing.excluded_hosts. */
bool router_excluded(const struct mfs_config *cfg, const char *host);

/*
 * Whether @host may hold replicas of @origin's files of category @cat_idx: active, not
 * excluded, not ephemeral, not @origin, and not sharing that category's storage with @origin.
 * When this node is @host or @origin, "sharing" also needs its probe of that storage (checker
 * @sh, NULL = none) to agree (sync/shared.h): an unhealthy shared storage here is synced like
 * any other.
 */
bool router_can_receive(const struct mfs_config *cfg, struct shared *sh,
			const struct cfg_host *host, const struct cfg_host *origin, size_t cat_idx);

/* Whether the config says @a and @b see @b's directory of category @cat_idx on storage they
 * share (a shared_storage path of each holds it). The config alone; no probe. */
bool router_config_shares(const struct mfs_config *cfg, const struct cfg_host *a,
			  const struct cfg_host *b, size_t cat_idx);

/*
 * The hosts that should hold replicas of version @hash of (@cat_idx, @path) produced by
 * @origin: the replication_target eligible hosts (router_can_receive with @sh) with the highest
 * rendezvous scores, skipping
 * those in @down (bit per host index). Returns the bitmask of host indexes (< 64).
 */
uint64_t router_replica_targets(const struct mfs_config *cfg, struct shared *sh,
				const struct cfg_host *origin, size_t cat_idx, const char *path,
				const struct hash128 *hash, uint64_t down);

/*
 * The place of @host (0 = first) among the hosts that take the broadcast of version @hash of
 * @path from @origin (active, with an address, not excluded, not in @down), by the same
 * rendezvous scores; -1 when @host is not one of them. The first few fetch from the producer,
 * the others from their copies (sync/autosync.c).
 */
int router_broadcast_rank(const struct mfs_config *cfg, const struct cfg_host *origin,
			  const char *path, const struct hash128 *hash, uint64_t down,
			  const struct cfg_host *host);

#endif
