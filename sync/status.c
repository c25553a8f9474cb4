/*
 * status — the node's report about itself and the cluster as it knows it.
 *
 * Every call takes one snapshot (struct snap): the config (immutable), the indexer's counters
 * and, for the full report, the catalog totals of each host. Both JSON documents and the lag
 * are built from that snapshot, so the numbers in one answer agree with each other. No lock of
 * ours is held at any time; the indexer and the catalog lock themselves.
 *
 * What goes in:
 *   - this node is "up", its circuit "closed"; its manifest is confirmed by the indexer, so
 *     its lag is the time since the last full scan finished (since the daemon started, before
 *     the first scan is done);
 *   - every other host as the manifest pulls saw it (sync/peers.h): up / degraded / down, the
 *     time since the last successful pull (its lag), and the failed requests; a host never
 *     reached has last_seen_s and lag_s null. Its circuit is its HTTP transport's breaker
 *     (sync/circuit.h): closed / open / half-open. A host whose circuit is not closed is
 *     "down", whatever its last pull said: nothing is asked of it until a probe succeeds;
 *   - this node's unreplicated bytes are AutoSync's count from its last pass (own files
 *     with fewer copies on other hosts than replication_target, sync/autosync.h); before the
 *     first pass every own byte counts, whenever replication_target > 0;
 *   - the report's recent failures: files whose last fetch failed, from the last_error
 *     records of the cache (catalog table `local`; a fetch that completes clears its file's
 *     record), at most STATUS_MAX_FAILURES, in path order, only files the namespace still
 *     shows as another host's version. The walk of `local` is one catalog call; the records
 *     carry no time, so "recent" means "not cleared by a success since".
 */
#include "sync/status.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sync/autosync.h"
#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/cache.h"
#include "sync/daemon.h"
#include "sync/fetch.h"
#include "sync/indexer.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/peers.h"
#include "sync/router.h"
#include "sync/shared.h"
#include "sync/util.h"

#define STALE_LAG_S (30 * 60)
#define CRITICAL_LAG_S (60 * 60)
#define STATUS_MAX_FAILURES 10		/* listed in recent_failures */
#define STATUS_FAILURE_CANDIDATES 64	/* error records kept from the walk, before filtering */

/* What is known about one configured host at the time of the snapshot. */
struct host_view {
	const struct cfg_host *h;
	bool self;
	bool reached;		/* ever heard from: lag_s and last_seen_s are valid */
	const char *state;	/* up / degraded / down */
	const char *circuit;	/* closed / open / half-open */
	bool circuit_open;	/* open or half-open: nothing can be synced with it now */
	bool probe_wait;	/* open: next_probe_s is valid */
	int64_t next_probe_s;	/* open: seconds until its next probe may go (rounded up) */
	int64_t lag_s;
	int64_t last_seen_s;
	uint64_t errors;
	uint64_t files;
	uint64_t bytes;
	uint64_t unreplicated;
	bool stale;
	bool critical;
	bool critical_unreplicated; /* critical because ephemeral with unreplicated data */
};

struct snap {
	struct daemon *d;
	const struct mfs_config *cfg;
	int64_t now;
	struct indexer_stats ix;
	struct host_view *hosts;	/* cfg->n_hosts entries, in config order */
	struct host_view *self;
	struct shared_view *shared;	/* this node's shared storage (sync/shared.h) */
	size_t n_shared;
	size_t n_shared_bad;		/* unhealthy ones: this node is then "degraded" */
};

/*
 * The strategy in effect. `auto` resolves from this node's config entry: an ephemeral node
 * replicates its own data out (ephemeral); a node that produces models announces them
 * (broadcast) — a role containing "training_primary" or the "coordinator" role; any other
 * node fetches on read and by priority (hybrid). See router_strategy().
 */
static const char *effective_strategy(const struct mfs_config *cfg)
{
	return config_strategy_name(router_strategy(cfg, cfg->self));
}

static bool host_excluded(const struct mfs_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->sync_routing.n_excluded_hosts; i++) {
		if (strcmp(cfg->sync_routing.excluded_hosts[i], name) == 0)
			return true;
	}
	return false;
}

/*
 * Bytes of this node's own live files that have fewer verified copies on other hosts than
 * replication_target: AutoSync's count (its last pass), plus what this node has published
 * since (new data has no copies yet); all of @own_bytes before the first pass.
 */
static uint64_t own_unreplicated(const struct snap *s, uint64_t own_bytes)
{
	struct autosync_status as;
	uint64_t n;

	if (s->cfg->sync_routing.replication_target <= 0)
		return 0;
	autosync_get_status(s->d->autosync, s->cfg, &as);
	if (!as.counted)
		return own_bytes;
	n = as.unreplicated_bytes + (own_bytes > as.own_bytes ? own_bytes - as.own_bytes : 0);
	return n < own_bytes ? n : own_bytes;
}

/*
 * This node's file count and bytes: the indexer's in-memory counters (it starts them from the
 * catalog and keeps them through its scans), so a health request costs nothing even while a
 * first scan of a million files is running; the catalog only when there is no indexer.
 */
static void self_totals(struct snap *s, uint64_t *files, uint64_t *bytes)
{
	int ret;

	*files = 0;
	*bytes = 0;
	if (s->d->indexer) {
		*files = s->ix.files;
		*bytes = s->ix.bytes;
		return;
	}
	if (!s->d->catalog)
		return;
	ret = catalog_totals(s->d->catalog, s->cfg->node, files, bytes);
	if (ret < 0)
		log_msg(LOG_WARNING, "status: catalog totals of %s: %s", s->cfg->node,
			strerror(-ret));
}

/* Fills s->hosts; with @peer_totals also the catalog totals of the other hosts. */
static int host_views(struct snap *s, bool peer_totals)
{
	const struct mfs_config *cfg = s->cfg;
	struct catalog *cat = s->d->catalog;
	int ret = 0;

	s->hosts = calloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*s->hosts));
	if (!s->hosts) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		struct host_view *v = &s->hosts[i];

		v->h = &cfg->hosts[i];
		v->self = v->h == cfg->self;
		v->circuit = "closed";
		if (v->self) {
			int64_t since = s->ix.last_scan_done > 0 ? s->ix.last_scan_done
								 : s->d->started_at;

			s->self = v;
			v->reached = true;
			v->state = "up";
			v->last_seen_s = 0;
			v->lag_s = s->now > since ? s->now - since : 0;
			v->errors = s->ix.unreadable;
			self_totals(s, &v->files, &v->bytes);
			v->unreplicated = own_unreplicated(s, v->bytes);
		} else {
			struct peer_status ps = { 0 };

			/* What the manifest pulls saw of it. A host never reached has no lag and
			 * no last_seen; its own unreplicated bytes are not known here (0). */
			if (s->d->peers)
				peers_status(s->d->peers, i, &ps);
			v->reached = ps.last_seen > 0;
			v->last_seen_s =
			    v->reached && s->now > ps.last_seen ? s->now - ps.last_seen : 0;
			v->lag_s = v->last_seen_s;
			v->errors = ps.errors;
			v->circuit = circuit_state_name(ps.circuit);
			v->circuit_open = ps.circuit != CIRCUIT_CLOSED;
			v->probe_wait = ps.circuit == CIRCUIT_OPEN;
			v->next_probe_s = (ps.probe_in_ms + 999) / 1000;
			switch (v->reached && !v->circuit_open ? ps.state : PEER_DOWN) {
			case PEER_UP:
				v->state = "up";
				break;
			case PEER_DEGRADED:
				v->state = "degraded";
				break;
			default:
				v->state = "down";
				break;
			}
			if (peer_totals && cat) {
				ret = catalog_totals(cat, v->h->name, &v->files, &v->bytes);
				if (ret < 0) {
					log_msg(LOG_WARNING, "status: catalog totals of %s: %s",
						v->h->name, strerror(-ret));
					v->files = v->bytes = 0;
					ret = 0;
				}
			}
		}
		/*
		 * Staleness needs a confirmed manifest to be old: a host never reached has none,
		 * so it is neither stale nor critical (nothing here is out of date relative to
		 * it); it is "down" and weighs on the health score instead.
		 */
		if (v->reached) {
			v->critical_unreplicated = v->h->is_ephemeral && v->unreplicated > 0;
			v->critical = v->lag_s > CRITICAL_LAG_S || v->critical_unreplicated;
			v->stale = !v->critical && v->lag_s > STALE_LAG_S;
		}
	}
out:
	return ret;
}

/* This node's shared storage as its probe last found it; an unhealthy one makes this node
 * "degraded" (its data there is synced, not passed through). */
static int shared_views(struct snap *s)
{
	int ret = shared_list(s->d->shared, &s->shared, &s->n_shared);

	for (size_t i = 0; ret == 0 && i < s->n_shared; i++)
		if (!s->shared[i].healthy)
			s->n_shared_bad++;
	if (s->n_shared_bad && s->self)
		s->self->state = "degraded";
	return ret;
}

static int take_snap(struct daemon *d, bool peer_totals, struct snap *s)
{
	int ret;

	memset(s, 0, sizeof(*s));
	s->d = d;
	s->cfg = d->cfg;
	s->now = now_s();
	if (d->indexer)
		indexer_get_stats(d->indexer, &s->ix);
	ret = host_views(s, peer_totals);
	if (ret == 0)
		ret = shared_views(s);
	return ret;
}

static void free_snap(struct snap *s)
{
	free(s->hosts);
	free(s->shared);
}

/* Seconds since the oldest confirmation among the reached active hosts (and this node). */
static int64_t snap_lag(const struct snap *s)
{
	int64_t lag = 0;

	for (size_t i = 0; i < s->cfg->n_hosts; i++) {
		const struct host_view *v = &s->hosts[i];

		if (v->reached && (v->h->active || v->self) && v->lag_s > lag)
			lag = v->lag_s;
	}
	return lag;
}

/*
 * Health score, 0..100, starting from 100:
 *   reachability  - 40 x (active peers down) / (active peers)      [none when alone]
 *   freshness     - 10 per stale host, 20 per critical host, at most 30 together
 *   local errors  - 10 when the indexer could not read some of this node's files
 *   durability    - 20 x (unreplicated own bytes) / (own bytes)
 *   shared storage - 10 when a shared storage of this node is unhealthy
 * rounded to the nearest integer. Inactive hosts (terminated, offline, ...) do not count.
 */
static int health_score(const struct snap *s)
{
	unsigned peers = 0, down = 0, stale = 0, critical = 0;
	double score = 100, fresh;

	for (size_t i = 0; i < s->cfg->n_hosts; i++) {
		const struct host_view *v = &s->hosts[i];

		if (!v->self && v->h->active) {
			peers++;
			if (strcmp(v->state, "down") == 0)
				down++;
		}
		if (v->critical)
			critical++;
		else if (v->stale)
			stale++;
	}
	if (peers)
		score -= 40.0 * down / peers;
	fresh = 10.0 * stale + 20.0 * critical;
	score -= fresh > 30 ? 30 : fresh;
	if (s->ix.unreadable > 0)
		score -= 10;
	if (s->self && s->self->bytes > 0)
		score -= 20.0 * (double)s->self->unreplicated / (double)s->self->bytes;
	if (s->n_shared_bad)
		score -= 10;
	if (score < 0)
		score = 0;
	return (int)(score + 0.5);
}

static int64_t uptime(const struct snap *s)
{
	return s->now > s->d->started_at ? s->now - s->d->started_at : 0;
}

static json_t *cache_json(const struct snap *s)
{
	uint64_t used = 0, max = s->cfg->cache_max_size;

	if (s->d->cache)
		cache_usage(s->d->cache, &used, &max);
	return json_pack("{s:I,s:I}", "used", (json_int_t)used, "max", (json_int_t)max);
}

static json_t *indexer_json(const struct snap *s)
{
	return json_pack("{s:I,s:I,s:I,s:I,s:s,s:I}",
			 "files", (json_int_t)s->ix.files,
			 "bytes", (json_int_t)s->ix.bytes,
			 "hashed_files", (json_int_t)s->ix.hashed_files,
			 "unreadable", (json_int_t)s->ix.unreadable,
			 "last_unreadable", s->ix.last_unreadable,
			 "last_scan_done", (json_int_t)s->ix.last_scan_done);
}

static json_t *opt_int(bool valid, int64_t v)
{
	return valid ? json_integer(v) : json_null();
}

/* One entry of the health "hosts" array. */
static json_t *host_health_json(const struct host_view *v)
{
	return json_pack("{s:s,s:s,s:s,s:o,s:I,s:b}",
			 "name", v->h->name,
			 "state", v->state,
			 "circuit", v->circuit,
			 "last_seen_s", opt_int(v->reached, v->last_seen_s),
			 "errors", (json_int_t)v->errors,
			 "active", v->h->active);
}

/* One entry of the report "hosts" array (plus "active", and "next_probe_s": null unless the
 * circuit is open). */
static json_t *host_report_json(const struct host_view *v)
{
	return json_pack("{s:s,s:s,s:s,s:o,s:I,s:I,s:I,s:b,s:o}",
			 "name", v->h->name,
			 "state", v->state,
			 "circuit", v->circuit,
			 "lag_s", opt_int(v->reached, v->lag_s),
			 "files", (json_int_t)v->files,
			 "bytes", (json_int_t)v->bytes,
			 "unreplicated_bytes", (json_int_t)v->unreplicated,
			 "active", v->h->active,
			 "next_probe_s", opt_int(v->probe_wait, v->next_probe_s));
}

/*
 * Adds to @out (health or report) "shared_storage": [{"category", "path", "state" healthy /
 * unhealthy, "detail", "mode" passthrough / synced, "checked_s"}], and to this node's entry
 * of "hosts", when a shared storage is unhealthy, "reason". 0 or -ENOMEM.
 */
static int add_shared_json(const struct snap *s, json_t *out)
{
	json_t *arr = json_array(), *self_json;
	char reason[1024] = "";
	size_t len = 0;

	if (!arr || json_object_set_new(out, "shared_storage", arr) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < s->n_shared; i++) {
		const struct shared_view *v = &s->shared[i];
		const char *cat = s->cfg->categories[v->cat_idx].name;

		if (json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}",
				"category", cat,
				"path", v->path,
				"state", v->healthy ? "healthy" : "unhealthy",
				"detail", v->detail,
				"mode", v->healthy ? "passthrough" : "synced",
				"checked_s", (json_int_t)v->checked_s)) < 0)
			return -ENOMEM;
		if (!v->healthy && len < sizeof(reason))
			len += (size_t)snprintf(reason + len, sizeof(reason) - len,
						"%sshared storage of %s unhealthy: %s",
						len ? "; " : "", cat, v->detail);
	}
	self_json = json_array_get(json_object_get(out, "hosts"),
				   (size_t)(s->cfg->self - s->cfg->hosts));
	if (reason[0] && self_json &&
	    json_object_set_new(self_json, "reason", json_string(reason)) < 0)
		return -ENOMEM;
	return 0;
}

/*
 * The user.meshfs.health object (INTERFACE.md) plus "indexer", "shared_storage" and, per
 * host, "active" (and "reason" for this node when degraded). Returns new JSON, or NULL when
 * memory runs out.
 */
json_t *status_health(struct daemon *d)
{
	const struct mfs_config *cfg = d->cfg;
	json_t *out = NULL, *hosts = NULL;
	struct snap s;

	if (take_snap(d, false, &s) < 0)
		goto out;
	hosts = json_array();
	if (!hosts)
		goto out;
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		if (json_array_append_new(hosts, host_health_json(&s.hosts[i])) < 0)
			goto out;
	}
	out = json_pack("{s:s,s:I,s:s,s:O,s:o,s:I,s:I,s:o}",
			"node", cfg->node,
			"uptime_s", (json_int_t)uptime(&s),
			"strategy", effective_strategy(cfg),
			"hosts", hosts,
			"cache", cache_json(&s),
			"queue", (json_int_t)fetch_queue_len(s.d->fetch),
			"unreplicated_bytes", (json_int_t)(s.self ? s.self->unreplicated : 0),
			"indexer", indexer_json(&s));
	if (out && add_shared_json(&s, out) < 0) {
		json_decref(out);
		out = NULL;
	}
out:
	json_decref(hosts);
	free_snap(&s);
	return out;
}

/*
 * Recommendations: a critical host is to be synced now — at "critical" priority when it is
 * an ephemeral node holding unreplicated data (it may vanish with it), "high" when it is
 * just far behind; a stale host is scheduled at "normal". A host whose circuit is open (or
 * half-open) cannot be synced now — nothing is asked of it until its probe succeeds — so a
 * critical one is scheduled instead, at the priority it would have had; a host that is down
 * but not yet behind needs nothing. Hosts that sync_routing excludes get none: nothing is
 * synced with them.
 */
static int add_recommendations(const struct snap *s, json_t *stale, json_t *critical,
			       json_t *recs)
{
	int ret = 0;

	for (size_t i = 0; i < s->cfg->n_hosts; i++) {
		const struct host_view *v = &s->hosts[i];
		const char *action, *priority;
		json_t *rec;

		if (!v->stale && !v->critical)
			continue;
		if (json_array_append_new(v->critical ? critical : stale,
					  json_string(v->h->name)) < 0) {
			ret = -ENOMEM;
			goto out;
		}
		if (host_excluded(s->cfg, v->h->name))
			continue;
		action = v->critical && !v->circuit_open ? "sync_now" : "schedule";
		priority = v->critical_unreplicated ? "critical" : v->critical ? "high" : "normal";
		rec = json_pack("{s:s,s:s,s:s}",
				"host", v->h->name,
				"action", action,
				"priority", priority);
		if (json_array_append_new(recs, rec) < 0) {
			ret = -ENOMEM;
			goto out;
		}
	}
out:
	return ret;
}

/* The error records collected by failure_row (catalog lock held: copies only). */
struct failure_walk {
	const struct mfs_config *cfg;
	size_t n;
	struct {
		int cat;
		char *path;
		char *error;
	} rows[STATUS_FAILURE_CANDIDATES];
};

static int failure_row(void *arg, const struct cat_local *l)
{
	struct failure_walk *w = arg;
	int cat;

	if (!l->last_error || !*l->last_error || !l->path || !*l->path)
		return 0;
	cat = config_category_index(w->cfg, l->category);
	if (cat < 0)
		return 0;
	w->rows[w->n].path = strdup(l->path);
	w->rows[w->n].error = strdup(l->last_error);
	if (!w->rows[w->n].path || !w->rows[w->n].error) {
		free(w->rows[w->n].path);
		free(w->rows[w->n].error);
		return -ENOMEM;
	}
	w->rows[w->n].cat = cat;
	return ++w->n == STATUS_FAILURE_CANDIDATES ? 1 : 0;
}

/*
 * "recent_failures": [{"path": "<category>/<path>", "error"}] of files whose last fetch
 * failed (see the header). A record of a file that is gone, or whose shown version is now
 * this node's own, is left out. Returns new JSON (an empty array when there is no cache or
 * the walk fails), or NULL when memory runs out.
 */
static json_t *failures_json(const struct snap *s)
{
	struct failure_walk *w;
	json_t *arr = json_array();
	size_t self_idx = (size_t)(s->cfg->self - s->cfg->hosts);
	int ret;

	if (!arr || !s->d->catalog || !s->d->ns)
		return arr;
	w = calloc(1, sizeof(*w));
	if (!w) {
		json_decref(arr);
		return NULL;
	}
	w->cfg = s->cfg;
	ret = catalog_local_foreach(s->d->catalog, failure_row, w);
	if (ret < 0)
		log_msg(LOG_WARNING, "status: recent failures: %s", strerror(-ret));
	for (size_t i = 0; i < w->n; i++) {
		struct ns_found found;
		char *path = NULL;
		json_t *rec;

		if (!arr || json_array_size(arr) >= STATUS_MAX_FAILURES)
			break;
		if (ns_find_file(s->d->ns, (size_t)w->rows[i].cat, w->rows[i].path, &found, NULL,
				 NULL) < 0 || found.host < 0 || (size_t)found.host == self_idx)
			continue;
		if (asprintf(&path, "%s/%s", s->cfg->categories[w->rows[i].cat].name,
			     w->rows[i].path) < 0) {
			json_decref(arr);
			arr = NULL;
			break;
		}
		rec = json_pack("{s:s,s:s}", "path", path, "error", w->rows[i].error);
		free(path);
		if (json_array_append_new(arr, rec) < 0) {
			json_decref(arr);
			arr = NULL;
		}
	}
	for (size_t i = 0; i < w->n; i++) {
		free(w->rows[i].path);
		free(w->rows[i].error);
	}
	free(w);
	return arr;
}

/*
 * The `meshfs status --json` object (INTERFACE.md), plus "uptime_s", "indexer",
 * "recent_failures", "shared_storage" and, per host, "active" and "next_probe_s" (and
 * "reason" for this node when degraded). Returns new JSON, or NULL
 * when memory runs out.
 */
json_t *status_report(struct daemon *d)
{
	const struct mfs_config *cfg = d->cfg;
	json_t *out = NULL, *hosts = NULL, *stale = NULL, *critical = NULL, *recs = NULL;
	struct snap s;

	if (take_snap(d, true, &s) < 0)
		goto out;
	hosts = json_array();
	stale = json_array();
	critical = json_array();
	recs = json_array();
	if (!hosts || !stale || !critical || !recs)
		goto out;
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		if (json_array_append_new(hosts, host_report_json(&s.hosts[i])) < 0)
			goto out;
	}
	if (add_recommendations(&s, stale, critical, recs) < 0)
		goto out;
	out = json_pack("{s:s,s:s,s:i,s:O,s:O,s:O,s:O,s:o,s:I,s:I,s:o,s:o}",
			"node", cfg->node,
			"strategy", effective_strategy(cfg),
			"health_score", health_score(&s),
			"hosts", hosts,
			"stale_hosts", stale,
			"critical_hosts", critical,
			"recommendations", recs,
			"cache", cache_json(&s),
			"queue", (json_int_t)fetch_queue_len(s.d->fetch),
			"uptime_s", (json_int_t)uptime(&s),
			"indexer", indexer_json(&s),
			"recent_failures", failures_json(&s));
	if (out && add_shared_json(&s, out) < 0) {
		json_decref(out);
		out = NULL;
	}
out:
	json_decref(recs);
	json_decref(critical);
	json_decref(stale);
	json_decref(hosts);
	free_snap(&s);
	return out;
}

/*
 * Seconds since the oldest active host's manifest was last confirmed. Hosts never reached
 * have no confirmation and are not counted (they show as "down" in the health instead), so
 * today this is this node's own lag: the time since the indexer's last full scan.
 */
int64_t status_lag(struct daemon *d)
{
	struct snap s;
	int64_t lag = 0;

	if (take_snap(d, false, &s) == 0)
		lag = snap_lag(&s);
	free_snap(&s);
	return lag;
}

/* ---- human output ---- */

static void fmt_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)n;
	size_t u = 0;

	while (v >= 1024 && u + 1 < ARRAY_SIZE(units)) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", n);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
}

static void fmt_lag(json_t *lag, char *buf, size_t len)
{
	json_int_t s = json_integer_value(lag);

	if (!json_is_integer(lag))
		snprintf(buf, len, "never");
	else if (s < 120)
		snprintf(buf, len, "%llds", (long long)s);
	else if (s < 2 * 3600)
		snprintf(buf, len, "%lldm", (long long)(s / 60));
	else if (s < 2 * 86400)
		snprintf(buf, len, "%lldh", (long long)(s / 3600));
	else
		snprintf(buf, len, "%lldd", (long long)(s / 86400));
}

static uint64_t jint(json_t *obj, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(obj, key));

	return v > 0 ? (uint64_t)v : 0;
}

static const char *jstr(json_t *obj, const char *key)
{
	const char *v = json_string_value(json_object_get(obj, key));

	return v ? v : "?";
}

static void print_names(FILE *out, const char *label, json_t *arr)
{
	size_t i;
	json_t *v;

	fprintf(out, "%s:", label);
	if (json_array_size(arr) == 0)
		fprintf(out, " none");
	json_array_foreach(arr, i, v) {
		const char *name = json_string_value(v);

		fprintf(out, "%s %s", i ? "," : "", name ? name : "?");
	}
	fputc('\n', out);
}

/* Prints @report (from status_report) as a table for people. */
void status_print_human(json_t *report, FILE *out)
{
	const char *node = jstr(report, "node");
	json_t *hosts = json_object_get(report, "hosts");
	json_t *recs = json_object_get(report, "recommendations");
	json_t *fails = json_object_get(report, "recent_failures");
	json_t *shared = json_object_get(report, "shared_storage");
	json_t *cache = json_object_get(report, "cache");
	json_t *ix = json_object_get(report, "indexer");
	char used[32], max[32];
	int width = (int)strlen("HOST");
	size_t i;
	json_t *h;

	json_array_foreach(hosts, i, h) {
		int w = (int)strlen(jstr(h, "name")) + (strcmp(jstr(h, "name"), node) == 0 ? 2 : 0);

		if (w > width)
			width = w;
	}

	fprintf(out, "node %s   strategy %s   health %" PRIu64 "/100\n", node,
		jstr(report, "strategy"), jint(report, "health_score"));
	fmt_bytes(jint(cache, "used"), used, sizeof(used));
	if (jint(cache, "max"))
		fmt_bytes(jint(cache, "max"), max, sizeof(max));
	else
		snprintf(max, sizeof(max), "no limit");
	fprintf(out, "cache %s used (max %s)   queue %" PRIu64 "\n\n", used, max,
		jint(report, "queue"));

	fprintf(out, "%-*s  %-8s  %-9s  %6s  %10s  %10s  %12s\n", width, "HOST", "STATE", "CIRCUIT",
		"LAG", "FILES", "BYTES", "UNREPLICATED");
	json_array_foreach(hosts, i, h) {
		const char *name = jstr(h, "name");
		char label[256], lag[24], bytes[32], unrepl[32], probe[48] = "";
		json_t *active = json_object_get(h, "active");
		json_t *next_probe = json_object_get(h, "next_probe_s");

		snprintf(label, sizeof(label), "%s%s", name, strcmp(name, node) == 0 ? " *" : "");
		fmt_lag(json_object_get(h, "lag_s"), lag, sizeof(lag));
		fmt_bytes(jint(h, "bytes"), bytes, sizeof(bytes));
		fmt_bytes(jint(h, "unreplicated_bytes"), unrepl, sizeof(unrepl));
		if (json_is_integer(next_probe))
			snprintf(probe, sizeof(probe), "  (next probe in %llds)",
				 (long long)json_integer_value(next_probe));
		fprintf(out, "%-*s  %-8s  %-9s  %6s  %10" PRIu64 "  %10s  %12s%s%s\n", width, label,
			jstr(h, "state"), jstr(h, "circuit"), lag, jint(h, "files"), bytes, unrepl,
			json_is_false(active) ? "  (inactive)" : "", probe);
	}
	fprintf(out, "(* this node; LAG = time since the host's data was last confirmed)\n\n");
	if (json_array_size(shared) > 0) {
		fprintf(out, "shared storage:\n");
		json_array_foreach(shared, i, h)
		    fprintf(out, "  %s  %s  %s (%s): %s\n", jstr(h, "category"), jstr(h, "path"),
			    jstr(h, "state"), jstr(h, "mode"), jstr(h, "detail"));
		fputc('\n', out);
	}

	print_names(out, "stale hosts", json_object_get(report, "stale_hosts"));
	print_names(out, "critical hosts", json_object_get(report, "critical_hosts"));
	fprintf(out, "recommendations:");
	if (json_array_size(recs) == 0)
		fprintf(out, " none");
	fputc('\n', out);
	json_array_foreach(recs, i, h)
		fprintf(out, "  %-*s  %-8s  priority %s\n", width, jstr(h, "host"),
			jstr(h, "action"), jstr(h, "priority"));
	fprintf(out, "recent failures:");
	if (json_array_size(fails) == 0)
		fprintf(out, " none");
	fputc('\n', out);
	json_array_foreach(fails, i, h)
		fprintf(out, "  %s: %s\n", jstr(h, "path"), jstr(h, "error"));

	if (jint(ix, "unreadable"))
		fprintf(out, "unreadable files here: %" PRIu64 " (latest: %s)\n",
			jint(ix, "unreadable"), jstr(ix, "last_unreadable"));
}
