/*
 * router — strategies, role wants and replica targets (see router.h).
 */
#include "sync/router.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "sync/shared.h"

bool router_publishes_models(const char *role)
{
	return role && (strstr(role, "training_primary") || strcmp(role, "coordinator") == 0);
}

enum cfg_strategy router_strategy(const struct mfs_config *cfg, const struct cfg_host *host)
{
	enum cfg_strategy s = cfg->auto_sync.strategy;

	if (host != cfg->self || s == CFG_STRATEGY_AUTO) {
		/* Another host's own setting is not known here: judged as `auto` would. */
		if (host->is_ephemeral)
			return CFG_STRATEGY_EPHEMERAL;
		if (router_publishes_models(host->role))
			return CFG_STRATEGY_BROADCAST;
		return CFG_STRATEGY_HYBRID;
	}
	return s;
}

enum router_want router_role_wants(const char *role, const char *category)
{
	if (!role)
		return ROUTER_WANT_NONE;
	if (strstr(role, "storage"))
		return ROUTER_WANT_ALL;
	if (strstr(role, "training"))
		return strcmp(category, "models") == 0 ? ROUTER_WANT_NEWEST
		       : strcmp(category, "training") == 0 || strcmp(category, "games") == 0
			       ? ROUTER_WANT_ALL
			       : ROUTER_WANT_NONE;
	if (strstr(role, "selfplay"))
		return strcmp(category, "models") == 0 ? ROUTER_WANT_NEWEST : ROUTER_WANT_NONE;
	return ROUTER_WANT_NONE;
}

bool router_excluded(const struct mfs_config *cfg, const char *host)
{
	for (size_t i = 0; i < cfg->sync_routing.n_excluded_hosts; i++)
		if (strcmp(cfg->sync_routing.excluded_hosts[i], host) == 0)
			return true;
	return false;
}

bool router_config_shares(const struct mfs_config *cfg, const struct cfg_host *a,
			  const struct cfg_host *b, size_t cat_idx)
{
	char *dir = config_category_dir(cfg, b, cat_idx);
	bool shared = dir && config_is_shared(b, dir) && config_is_shared(a, dir);

	free(dir);
	return shared;
}

/*
 * Whether @a and @b see @b's directory of category @cat_idx on storage they share: the config
 * says so and, when this node is one of them, its probe of that storage agrees (it is healthy
 * here and the other one's probe is not missing while it is up; sync/shared.h). A pair this
 * node is not part of is judged by the config alone: only they can look.
 */
static bool share_storage(const struct mfs_config *cfg, struct shared *sh,
			  const struct cfg_host *a, const struct cfg_host *b, size_t cat_idx)
{
	if (!router_config_shares(cfg, a, b, cat_idx))
		return false;
	if (a == cfg->self)
		return shared_pair_ok(sh, b, cat_idx);
	if (b == cfg->self)
		return shared_pair_ok(sh, a, cat_idx);
	return true;
}

bool router_can_receive(const struct mfs_config *cfg, struct shared *sh,
			const struct cfg_host *host, const struct cfg_host *origin, size_t cat_idx)
{
	return host != origin && host->active && host->address && !host->is_ephemeral &&
	       !router_excluded(cfg, host->name) && !share_storage(cfg, sh, host, origin, cat_idx);
}

/* The rendezvous score of @host for one version: XXH3 of the host name, the path and the
 * version hash, chained through the seeds. */
static uint64_t score(const char *host, const char *path, const struct hash128 *hash)
{
	uint8_t hb[16];
	uint64_t h = XXH3_64bits(host, strlen(host));

	hash_to_bytes(hash, hb);
	h = XXH3_64bits_withSeed(path, strlen(path), h);
	return XXH3_64bits_withSeed(hb, sizeof(hb), h);
}

uint64_t router_replica_targets(const struct mfs_config *cfg, struct shared *sh,
				const struct cfg_host *origin, size_t cat_idx, const char *path,
				const struct hash128 *hash, uint64_t down)
{
	uint64_t chosen = 0;
	int want = cfg->sync_routing.replication_target;

	/* replication_target rounds of "the best not chosen yet": hosts are few (< 64). */
	for (int k = 0; k < want; k++) {
		uint64_t best_score = 0;
		int best = -1;

		for (size_t i = 0; i < cfg->n_hosts && i < 64; i++) {
			const struct cfg_host *h = &cfg->hosts[i];
			uint64_t s;

			if ((chosen | down) & ((uint64_t)1 << i) ||
			    !router_can_receive(cfg, sh, h, origin, cat_idx))
				continue;
			s = score(h->name, path, hash);
			if (best < 0 || s > best_score) {
				best = (int)i;
				best_score = s;
			}
		}
		if (best < 0)
			break;
		chosen |= (uint64_t)1 << best;
	}
	return chosen;
}

int router_broadcast_rank(const struct mfs_config *cfg, const struct cfg_host *origin,
			  const char *path, const struct hash128 *hash, uint64_t down,
			  const struct cfg_host *host)
{
	int idx = (int)(host - cfg->hosts), rank = 0;
	uint64_t mine;

	if (host == origin || !host->active || !host->address || router_excluded(cfg, host->name))
		return -1;
	mine = score(host->name, path, hash);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		uint64_t theirs;

		if ((int)i == idx || h == origin || !h->active || !h->address ||
		    router_excluded(cfg, h->name) || (i < 64 && ((down >> i) & 1)))
			continue;
		theirs = score(h->name, path, hash);
		if (theirs > mine || (theirs == mine && strcmp(h->name, host->name) < 0))
			rank++;
	}
	return rank;
}
