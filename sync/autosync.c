/*
 * autosync — the AutoSync thread (see autosync.h for what a pass does).
 *
 * A pass never holds the catalog's lock while it calls the cache or the fetcher (the cache
 * writes to the catalog): catalog walks only collect candidates into bounded lists, which are
 * handled after the walk. The remote walk keeps a cursor, so a node with more wanted files than
 * one pass takes (AS_MAX_CANDIDATES) gets through all of them over the next passes.
 */
#include "sync/autosync.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/daemon.h"
#include "sync/fetch.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/peers.h"
#include "sync/router.h"
#include "sync/util.h"

#define AS_MAX_CANDIDATES 4096		/* wanted files handled per pass */
#define AS_MAX_REPLICAS 4096		/* own replica entries checked per pass */
#define AS_OWN_PAGE 512			/* own entries copied per hold of the catalog's lock */
#define AS_NEWEST_MODELS 3		/* "the newest models" */
#define NS_PER_S 1000000000LL
#define AS_MIN_GAP_NS (2 * NS_PER_S)	/* between kicked passes (or 5x a pass's time) */
#define AS_EPHEMERAL_CYCLE_NS (2 * NS_PER_S)
#define AS_BROADCAST_FANOUT 2		/* receivers that fetch a broadcast from its producer */
#define AS_BROADCAST_WAIT_S 120		/* then everyone may, copies or not */

struct completed {
	struct completed *next;
	size_t cat;
	char *path;
	struct hash128 hash;
};

/* A file a pass wants here. */
struct candidate {
	size_t cat;
	char *path;
	struct hash128 hash;
	enum fetch_priority prio;
	bool keep; /* a replica this node keeps for an ephemeral host: pinned */
	uint64_t avoid;			/* sources asked only when no other is left */
};

struct newest {
	int64_t mtime_ns;
	char *path;
	struct hash128 hash;
	int origin;
};

/* When this node first saw a broadcast model (the fallback counts from then, not its mtime,
 * which a copied or renamed checkpoint keeps from long ago). */
struct first_seen {
	struct hash128 hash;
	int64_t at_ns;			/* 0: empty slot */
};

#define AS_FIRST_SEEN 16

struct autosync {
	struct daemon *d;
	const struct mfs_config *cfg;
	enum cfg_strategy strategy;
	pthread_t thread;
	bool started;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Under lock: */
	bool stop;
	bool kicked;
	struct completed *done;
	struct autosync_status st;

	/* The thread only: */
	size_t cursor;			/* remote walk: wanted entries to skip (see file header) */
	struct first_seen seen[AS_FIRST_SEEN];
};

/* ------------------------------------------------------------------ helpers */

static int host_index(const struct mfs_config *cfg, const struct cfg_host *h)
{
	return h ? (int)(h - cfg->hosts) : -1;
}

static int self_index(const struct mfs_config *cfg)
{
	return host_index(cfg, cfg->self);
}

static unsigned popcount64(uint64_t v)
{
	return (unsigned)__builtin_popcountll(v);
}

/* Hosts this node currently believes down (their sources are skipped for replica targets). */
static uint64_t hosts_down(struct autosync *a)
{
	uint64_t down = 0;

	for (size_t i = 0; a->d->peers && i < a->cfg->n_hosts && i < 64; i++) {
		struct peer_status ps = { 0 };

		if (&a->cfg->hosts[i] == a->cfg->self)
			continue;
		peers_status(a->d->peers, i, &ps);
		if (ps.state == PEER_DOWN)
			down |= (uint64_t)1 << i;
	}
	return down;
}

static void announce(struct autosync *a)
{
	int64_t seq = 0;

	if (a->d->peers && catalog_max_seq(a->d->catalog, a->cfg->node, &seq) == 0)
		peers_announce(a->d->peers, seq);
}

/* ------------------------------------------------------------------ replicas */

/*
 * Lists this node's complete copy of version @hash of (@cat, @path) in its manifest. Quiet
 * when the version is no longer the one a producer shows there, or this node has its own file
 * there. Returns true when an entry was written.
 */
static bool publish_replica(struct autosync *a, size_t cat, const char *path,
			    const struct hash128 *hash)
{
	const struct mfs_config *cfg = a->cfg;
	struct hash128 *chunks = NULL;
	struct cache_file *cf = NULL;
	struct ns_found found;
	uint64_t holders = 0;
	struct cat_entry e;
	size_t n = 0;
	int64_t seq = 0;
	bool done = false;
	int ret;

	if (ns_find_file(a->d->ns, cat, path, &found, hash, &holders) < 0 ||
	    !hash_equal(&found.remote.hash, hash) || found.origin < 0 ||
	    found.origin == self_index(cfg))
		return false;
	ret = cache_file_get(a->d->cache, cfg->categories[cat].name, path, hash,
			     found.remote.size, &cf);
	if (ret < 0 || !cache_file_complete(cf))
		goto out;
	n = cache_file_nchunks(cf);
	chunks = calloc(n ? n : 1, sizeof(*chunks));
	if (!chunks)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (cache_file_chunk_hash(cf, i, &chunks[i]) < 0)
			goto out;
	memset(&e, 0, sizeof(e));
	e.host = cfg->node;
	e.category = cfg->categories[cat].name;
	e.path = path;
	e.size = found.remote.size;
	e.mtime_ns = found.remote.mtime_ns;
	e.hash = *hash;
	e.origin = cfg->hosts[found.origin].name;
	e.confirmed_at = found.confirmed_at;
	ret = catalog_publish_replica(a->d->catalog, &e, chunks, n, &seq);
	if (ret == 0) {
		log_msg(LOG_INFO,
			"autosync: %s/%s of %s held here, listed as a replica (seq %" PRId64 ")",
			e.category, path, e.origin, seq);
		done = true;
	} else if (ret != -EEXIST) {
		log_msg(LOG_WARNING, "autosync: cannot list %s/%s as held here: %s", e.category,
			path, strerror(-ret));
	}
out:
	free(chunks);
	cache_file_put(cf);
	return done;
}

void autosync_fetch_complete(void *arg, const char *category, const char *path,
			     const struct hash128 *hash)
{
	struct autosync *a = arg;
	int cat = config_category_index(a->cfg, category);
	struct completed *c;

	if (cat < 0)
		return;
	c = calloc(1, sizeof(*c));
	if (c)
		c->path = strdup(path);
	if (!c || !c->path) {
		free(c);
		return; /* the next pass lists it (it finds the complete copy) */
	}
	c->cat = (size_t)cat;
	c->hash = *hash;
	pthread_mutex_lock(&a->lock);
	c->next = a->done;
	a->done = c;
	a->kicked = true;
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

/* ------------------------------------------------------------------ own entries */

/* One of this node's entries, as the own walk saw it. */
struct own_item {
	size_t cat;
	char *path;
	struct hash128 hash;
	int origin;			/* this node for its own files */
	uint64_t size;
};

struct own_walk {
	struct autosync *a;
	uint64_t unreplicated_bytes;
	uint64_t unreplicated_files;
	uint64_t own_files;
	uint64_t own_bytes;
	uint64_t replicas;
	struct own_item *items;		/* replica entries, to check after the walk */
	size_t n;
};

static int own_cb(void *arg, const struct cat_entry *e)
{
	struct own_walk *w = arg;
	const struct mfs_config *cfg = w->a->cfg;
	int cat = config_category_index(cfg, e->category);
	int self = self_index(cfg);
	struct ns_found found;
	uint64_t holders = 0;

	if (cat < 0)
		return 0;
	if (strcmp(e->origin, e->host) != 0) {
		const struct cfg_host *o = config_find_host(cfg, e->origin);

		w->replicas++;
		if (w->n < AS_MAX_REPLICAS && o) {
			struct own_item *it = &w->items[w->n];

			it->path = strdup(e->path);
			if (it->path) {
				it->cat = (size_t)cat;
				it->hash = e->hash;
				it->origin = host_index(cfg, o);
				it->size = e->size;
				w->n++;
			}
		}
		return 0;
	}
	w->own_files++;
	w->own_bytes += e->size;
	if (cfg->sync_routing.replication_target <= 0)
		return 0;
	if (ns_find_file(w->a->d->ns, (size_t)cat, e->path, &found, &e->hash, &holders) < 0)
		holders = 0;
	if (self >= 0 && self < 64)
		holders &= ~((uint64_t)1 << self);
	if (popcount64(holders) < (unsigned)cfg->sync_routing.replication_target) {
		w->unreplicated_bytes += e->size;
		w->unreplicated_files++;
	}
	return 0;
}

/* One page of this node's entries, copied under the catalog's lock and looked at after. */
struct own_page {
	struct cat_entry e[AS_OWN_PAGE];
	size_t n;
	int64_t last_seq;
};

static int page_cb(void *arg, const struct cat_entry *e)
{
	struct own_page *pg = arg;
	struct cat_entry *c = &pg->e[pg->n];

	pg->last_seq = e->seq;
	if (e->deleted)
		return 0;
	*c = *e;
	c->host = NULL; /* not needed; own_cb compares origin with the node */
	c->category = strdup(e->category);
	c->path = strdup(e->path);
	c->origin = strdup(e->origin);
	if (!c->category || !c->path || !c->origin) {
		free((char *)c->category);
		free((char *)c->path);
		free((char *)c->origin);
		return -ENOMEM;
	}
	pg->n++;
	return 0;
}

/*
 * Walks this node's entries: counts what is unreplicated and collects its replica entries. In
 * pages of AS_OWN_PAGE by seq, the catalog's lock held only while a page is copied: the data
 * server answers manifest requests in between, so a node with many files is not held up while
 * its own data is counted.
 */
static int walk_own(struct autosync *a, struct own_walk *w)
{
	struct own_page *pg = malloc(sizeof(*pg));
	int64_t since = 0;
	int ret = 0;

	memset(w, 0, sizeof(*w));
	w->a = a;
	w->items = calloc(AS_MAX_REPLICAS, sizeof(*w->items));
	if (!w->items || !pg) {
		free(pg);
		return -ENOMEM;
	}
	do {
		pg->n = 0;
		pg->last_seq = since;
		ret = catalog_changes_page(a->d->catalog, a->cfg->node, since, AS_OWN_PAGE, page_cb,
					   pg);
		for (size_t i = 0; i < pg->n; i++) {
			pg->e[i].host = a->cfg->node;
			if (ret == 0)
				own_cb(w, &pg->e[i]);
			free((char *)pg->e[i].category);
			free((char *)pg->e[i].path);
			free((char *)pg->e[i].origin);
		}
		if (pg->last_seq == since)
			break; /* nothing after @since: the end */
		since = pg->last_seq;
	} while (ret == 0);
	free(pg);
	return ret;
}

static void own_walk_free(struct own_walk *w)
{
	for (size_t i = 0; i < w->n; i++)
		free(w->items[i].path);
	free(w->items);
}

/* Withdraws the replica entries whose copy is gone or whose producer has moved on. */
static bool check_replicas(struct autosync *a, struct own_walk *w)
{
	bool changed = false;

	for (size_t i = 0; i < w->n; i++) {
		struct own_item *it = &w->items[i];
		const char *category = a->cfg->categories[it->cat].name;
		struct cache_info info;
		struct ns_found found;
		uint64_t holders = 0;
		bool keep;
		int64_t seq;

		keep = cache_lookup(a->d->cache, category, it->path, &info) == 0 &&
		       info.state == CACHE_COMPLETE && hash_equal(&info.hash, &it->hash);
		/* The producer still lists that version (a producer that went away keeps its
		 * last entries here: its copies are what is left of its data). */
		keep = keep && ns_find_file(a->d->ns, it->cat, it->path, &found, &it->hash,
					    &holders) == 0 &&
		       it->origin >= 0 && it->origin < 64 && (holders >> it->origin) & 1;
		if (keep)
			continue;
		if (catalog_drop_replica(a->d->catalog, a->cfg->node, category, it->path,
					 &it->hash, &seq) == 0) {
			log_msg(LOG_INFO, "autosync: %s/%s of %s no longer held here, withdrawn",
				category, it->path, a->cfg->hosts[it->origin].name);
			changed = true;
		}
	}
	return changed;
}

/* ------------------------------------------------------------------ remote entries */

struct remote_walk {
	struct autosync *a;
	uint64_t down;
	bool room_known[64];		/* what each host said it can still take (self: here) */
	uint64_t room[64];
	bool can_receive_any;		/* auto_sync on, this node not excluded */
	size_t skip;			/* wanted entries to pass over (the cursor) */
	size_t seen;			/* wanted entries met */
	struct candidate *cands;
	size_t n;
	bool full;
	struct newest newest[AS_NEWEST_MODELS];
	int models_cat;
};

/* Keeps @e among the AS_NEWEST_MODELS newest models (by mtime, one slot per path). */
static void newest_offer(struct remote_walk *w, const struct cat_entry *e, int origin)
{
	size_t at = 0;

	for (size_t i = 0; i < AS_NEWEST_MODELS; i++) {
		if (w->newest[i].path && strcmp(w->newest[i].path, e->path) == 0) {
			at = i;
			goto take;
		}
	}
	/* The empty slot, else the oldest. */
	for (size_t i = 1; i < AS_NEWEST_MODELS; i++)
		if (w->newest[at].path &&
		    (!w->newest[i].path || w->newest[i].mtime_ns < w->newest[at].mtime_ns))
			at = i;
take:
	if (w->newest[at].path && w->newest[at].mtime_ns >= e->mtime_ns)
		return;
	free(w->newest[at].path);
	w->newest[at].path = strdup(e->path);
	w->newest[at].mtime_ns = e->mtime_ns;
	w->newest[at].hash = e->hash;
	w->newest[at].origin = origin;
}

static void add_candidate(struct remote_walk *w, size_t cat, const char *path,
			  const struct hash128 *hash, enum fetch_priority prio, bool keep,
			  uint64_t avoid)
{
	struct candidate *c;

	if (w->seen++ < w->skip)
		return;
	if (w->n == AS_MAX_CANDIDATES) {
		w->full = true;
		return;
	}
	c = &w->cands[w->n];
	c->path = strdup(path);
	if (!c->path)
		return;
	c->cat = cat;
	c->hash = *hash;
	c->prio = prio;
	c->keep = keep;
	c->avoid = avoid;
	w->n++;
}

static int remote_cb(void *arg, const struct cat_entry *e)
{
	struct remote_walk *w = arg;
	struct autosync *a = w->a;
	const struct mfs_config *cfg = a->cfg;
	const struct cfg_host *origin = config_find_host(cfg, e->origin);
	int cat = config_category_index(cfg, e->category);
	uint64_t targets;

	if (cat < 0 || !origin || origin == cfg->self || !w->can_receive_any)
		return 0;
	/* Only the producer's own entry says what there is to take; replicas are its copies. */
	if (strcmp(e->host, e->origin) != 0)
		return 0;
	if (cat == w->models_cat)
		newest_offer(w, e, host_index(cfg, origin));
	if (origin->is_ephemeral &&
	    router_can_receive(cfg, a->d->shared, cfg->self, origin, (size_t)cat)) {
		uint64_t full = 0;

		/* A host without room for it is passed over: the next in line takes it. */
		for (size_t i = 0; i < cfg->n_hosts && i < 64; i++)
			if (w->room_known[i] && w->room[i] < e->size)
				full |= (uint64_t)1 << i;
		targets = router_replica_targets(cfg, a->d->shared, origin, (size_t)cat, e->path,
						 &e->hash, w->down | full);
		if ((targets >> self_index(cfg)) & 1) {
			add_candidate(w, (size_t)cat, e->path, &e->hash, FETCH_PRIO_NORMAL, true,
				      0);
			return 0;
		}
	}
	if (router_role_wants(cfg->self->role, e->category) == ROUTER_WANT_ALL)
		add_candidate(w, (size_t)cat, e->path, &e->hash, FETCH_PRIO_LOW, false, 0);
	return 0;
}

struct listed {
	const struct hash128 *hash;
	bool listed;
};

static void listed_cb(void *arg, const struct cat_entry *e)
{
	struct listed *l = arg;

	l->listed = !e->deleted && hash_equal(&e->hash, l->hash);
}

/* Whether this node's manifest lists version @hash at (@cat, @path). */
static bool replica_listed(struct autosync *a, size_t cat, const char *path,
			   const struct hash128 *hash)
{
	struct listed l = { .hash = hash };

	catalog_get(a->d->catalog, a->cfg->node, a->cfg->categories[cat].name, path, listed_cb,
		    &l);
	return l.listed;
}

/* Asks for candidate @c if it is still the version shown and not here yet. Returns whether a
 * fetch was asked for. */
static bool want_one(struct autosync *a, const struct candidate *c)
{
	const char *category = a->cfg->categories[c->cat].name;
	struct cache_info info;
	struct ns_found found;
	bool busy;

	if (ns_find_file(a->d->ns, c->cat, c->path, &found, NULL, NULL) < 0 ||
	    !hash_equal(&found.remote.hash, &c->hash) || found.host == self_index(a->cfg) ||
	    ns_category_passthrough(a->d->ns, c->cat))
		return false;
	if (c->keep)
		cache_set_pin(a->d->cache, category, c->path, true);
	if (cache_lookup(a->d->cache, category, c->path, &info) == 0 &&
	    info.state == CACHE_COMPLETE && hash_equal(&info.hash, &c->hash)) {
		if (!replica_listed(a, c->cat, c->path, &c->hash))
			publish_replica(a, c->cat, c->path, &c->hash);
		return false;
	}
	if (!a->d->fetch)
		return false;
	/* Asked again even while under way: the fetch then learns of holders that appeared since
	 * it started (a broadcast's second wave spreads over every copy, not the first one). */
	busy = fetch_busy(a->d->fetch, &c->hash);
	if (fetch_prefetch_avoiding(a->d->fetch, &found.remote, c->prio, c->avoid) < 0 || busy)
		return false;
	log_msg(LOG_DEBUG, "autosync: fetching %s/%s ahead (priority %d%s)", category, c->path,
		(int)c->prio, c->keep ? ", a replica kept for its ephemeral producer" : "");
	return true;
}

/* ------------------------------------------------------------------ the pass */

/* When this node first saw version @hash (now, the first time it is asked). */
static int64_t first_seen(struct autosync *a, const struct hash128 *hash)
{
	struct first_seen *oldest = &a->seen[0];

	for (size_t i = 0; i < AS_FIRST_SEEN; i++) {
		if (a->seen[i].at_ns && hash_equal(&a->seen[i].hash, hash))
			return a->seen[i].at_ns;
		if (!a->seen[i].at_ns || (oldest->at_ns && a->seen[i].at_ns < oldest->at_ns))
			oldest = &a->seen[i];
	}
	oldest->hash = *hash;
	oldest->at_ns = mono_ns();
	return oldest->at_ns;
}

/*
 * Whether this node's turn has come to fetch broadcast model @m: the first
 * AS_BROADCAST_FANOUT receivers (router_broadcast_rank) at once, from the producer; the others
 * once some other host holds a complete copy, and then not from the producer while another
 * source is left (*avoid); everyone once this node has known the model AS_BROADCAST_WAIT_S. So the
 * producer uploads about AS_BROADCAST_FANOUT copies however many nodes there are.
 */
static bool broadcast_turn(struct autosync *a, struct remote_walk *w, const struct newest *m,
			   uint64_t *avoid)
{
	const struct mfs_config *cfg = a->cfg;
	const struct cfg_host *origin = &cfg->hosts[m->origin];
	int rank = router_broadcast_rank(cfg, origin, m->path, &m->hash, w->down, cfg->self);
	uint64_t holders = 0, origin_bit = m->origin < 64 ? (uint64_t)1 << m->origin : 0;
	struct ns_found found;
	int self = self_index(cfg);

	if (rank < 0)
		return false;
	if (rank < AS_BROADCAST_FANOUT)
		return true;
	if (ns_find_file(a->d->ns, (size_t)w->models_cat, m->path, &found, &m->hash,
			 &holders) < 0)
		return false;
	holders &= ~origin_bit;
	if (self >= 0 && self < 64)
		holders &= ~((uint64_t)1 << self);
	if (holders) {
		*avoid = origin_bit;
		return true;
	}
	if (mono_ns() - first_seen(a, &m->hash) > (int64_t)AS_BROADCAST_WAIT_S * NS_PER_S)
		return true;
	log_msg(LOG_DEBUG, "autosync: models/%s: receiver %d of the broadcast, waiting for a "
		"first copy", m->path, rank);
	return false;
}

/* What every host can still take, as its last manifest said (this node: its cache now). */
static void note_rooms(struct autosync *a, struct remote_walk *w)
{
	int self = self_index(a->cfg);

	for (size_t i = 0; a->d->peers && i < a->cfg->n_hosts && i < 64; i++) {
		struct peer_status ps = { 0 };

		if ((int)i == self)
			continue;
		peers_status(a->d->peers, i, &ps);
		w->room_known[i] = ps.room_known;
		w->room[i] = ps.room;
	}
	if (self >= 0 && self < 64 && a->d->cache) {
		w->room_known[self] = true;
		w->room[self] = cache_room(a->d->cache);
	}
}

static void drain_completed(struct autosync *a, bool *changed)
{
	struct completed *c;

	pthread_mutex_lock(&a->lock);
	c = a->done;
	a->done = NULL;
	pthread_mutex_unlock(&a->lock);
	while (c) {
		struct completed *next = c->next;

		if (publish_replica(a, c->cat, c->path, &c->hash))
			*changed = true;
		free(c->path);
		free(c);
		c = next;
	}
}

static void pass(struct autosync *a)
{
	const struct mfs_config *cfg = a->cfg;
	struct remote_walk rw;
	struct own_walk ow;
	size_t queued = 0;
	bool changed = false;
	int ret;

	drain_completed(a, &changed);

	memset(&rw, 0, sizeof(rw));
	rw.a = a;
	rw.down = hosts_down(a);
	note_rooms(a, &rw);
	rw.can_receive_any = cfg->auto_sync.enabled && !router_excluded(cfg, cfg->node) &&
			     a->d->fetch;
	rw.skip = a->cursor;
	rw.models_cat = config_category_index(cfg, "models");
	/* Nothing to fetch ahead (AutoSync off, or this node excluded): no walk at all, so a
	 * burst of changes from a peer is not slowed by passes over its entries. */
	rw.cands = rw.can_receive_any ? calloc(AS_MAX_CANDIDATES, sizeof(*rw.cands)) : NULL;
	if (rw.cands) {
		ret = catalog_foreach_remote(a->d->catalog, cfg->node, remote_cb, &rw);
		if (ret < 0)
			log_msg(LOG_WARNING, "autosync: walking other hosts' entries: %s",
				strerror(-ret));
		/* The newest models: for a broadcast producer every node takes them; a role
		 * that wants models takes them from anyone. */
		for (size_t i = 0; i < AS_NEWEST_MODELS && rw.models_cat >= 0; i++) {
			struct newest *m = &rw.newest[i];
			bool broadcast, wanted;
			uint64_t avoid = 0;

			if (!m->path)
				continue;
			broadcast = router_strategy(cfg, &cfg->hosts[m->origin]) ==
				    CFG_STRATEGY_BROADCAST;
			wanted = router_role_wants(cfg->self->role, "models") != ROUTER_WANT_NONE;
			/* A broadcast model waits for this node's turn, role or not. */
			if (broadcast && !broadcast_turn(a, &rw, m, &avoid))
				continue;
			if (broadcast || wanted) {
				size_t skip = rw.skip;

				rw.skip = 0; /* never passed over by the cursor */
				add_candidate(&rw, (size_t)rw.models_cat, m->path, &m->hash,
					      broadcast ? FETCH_PRIO_HIGH : FETCH_PRIO_NORMAL,
					      false, avoid);
				rw.skip = skip;
				rw.seen--;
			}
		}
		for (size_t i = 0; i < rw.n; i++)
			if (want_one(a, &rw.cands[i]))
				queued++;
		/* Cursor: with the list full and nothing of it needing work, move past it. */
		if (rw.full && queued == 0)
			a->cursor += rw.n;
		else if (!rw.full)
			a->cursor = 0;
	}
	for (size_t i = 0; rw.cands && i < rw.n; i++)
		free(rw.cands[i].path);
	free(rw.cands);
	for (size_t i = 0; i < AS_NEWEST_MODELS; i++)
		free(rw.newest[i].path);

	ret = walk_own(a, &ow);
	if (ret == 0 && check_replicas(a, &ow))
		changed = true;
	if (changed || (a->strategy == CFG_STRATEGY_EPHEMERAL && ow.unreplicated_files))
		announce(a);
	pthread_mutex_lock(&a->lock);
	if (ret == 0) {
		a->st.unreplicated_bytes = ow.unreplicated_bytes;
		a->st.unreplicated_files = ow.unreplicated_files;
		a->st.own_files = ow.own_files;
		a->st.own_bytes = ow.own_bytes;
		a->st.replicas = ow.replicas;
		a->st.counted = true;
	}
	a->st.queued = queued;
	a->st.last_pass = now_s();
	pthread_mutex_unlock(&a->lock);
	own_walk_free(&ow);
	if (queued)
		log_msg(LOG_INFO, "autosync: %zu file%s asked for ahead", queued,
			queued == 1 ? "" : "s");
}

static void *autosync_main(void *arg)
{
	struct autosync *a = arg;
	int64_t interval = (int64_t)a->cfg->auto_sync.interval_seconds * NS_PER_S;
	int64_t next = 0, last = 0, gap = AS_MIN_GAP_NS;

	pthread_setname_np(pthread_self(), "meshfs-autosync");
	if (a->strategy == CFG_STRATEGY_EPHEMERAL && interval > AS_EPHEMERAL_CYCLE_NS)
		interval = AS_EPHEMERAL_CYCLE_NS;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		int64_t now = mono_ns();

		if (a->stop)
			break;
		if (a->done) {
			/* A copy just completed: list it now, not at the next pass. */
			bool changed = false;

			pthread_mutex_unlock(&a->lock);
			drain_completed(a, &changed);
			if (changed)
				announce(a);
			pthread_mutex_lock(&a->lock);
			continue;
		}
		if (a->kicked && now - last >= gap)
			next = now;
		if (now < next) {
			int64_t until = a->kicked ? last + gap : next;
			struct timespec ts;

			if (until > next)
				until = next;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += (until - now) / NS_PER_S;
			ts.tv_nsec += (until - now) % NS_PER_S;
			if (ts.tv_nsec >= NS_PER_S) {
				ts.tv_sec++;
				ts.tv_nsec -= NS_PER_S;
			}
			pthread_cond_timedwait(&a->cond, &a->lock, &ts);
			continue;
		}
		a->kicked = false;
		pthread_mutex_unlock(&a->lock);
		pass(a);
		/* However often kicked, passes take at most a fifth of the time. */
		gap = (mono_ns() - now) * 5;
		if (gap < AS_MIN_GAP_NS)
			gap = AS_MIN_GAP_NS;
		last = mono_ns();
		next = last + interval;
		pthread_mutex_lock(&a->lock);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* ------------------------------------------------------------------ API */

int autosync_start(struct daemon *d, struct autosync **out)
{
	struct autosync *a = calloc(1, sizeof(*a));
	pthread_condattr_t ca;
	int ret;

	if (!a)
		return -ENOMEM;
	a->d = d;
	a->cfg = d->cfg;
	a->strategy = router_strategy(d->cfg, d->cfg->self);
	a->st.strategy = a->strategy;
	pthread_mutex_init(&a->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cond, &ca);
	pthread_condattr_destroy(&ca);
	ret = -pthread_create(&a->thread, NULL, autosync_main, a);
	if (ret) {
		autosync_stop(a);
		return ret;
	}
	a->started = true;
	log_msg(LOG_INFO, "autosync: strategy %s%s", config_strategy_name(a->strategy),
		d->cfg->auto_sync.enabled ? "" : " (fetching ahead off: auto_sync.enabled false)");
	*out = a;
	return 0;
}

void autosync_stop(struct autosync *a)
{
	struct completed *c;

	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (a->started)
		pthread_join(a->thread, NULL);
	for (c = a->done; c;) {
		struct completed *next = c->next;

		free(c->path);
		free(c);
		c = next;
	}
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

void autosync_kick(struct autosync *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	if (!a->kicked) {
		a->kicked = true;
		pthread_cond_signal(&a->cond);
	}
	pthread_mutex_unlock(&a->lock);
}

void autosync_get_status(struct autosync *a, const struct mfs_config *cfg,
			 struct autosync_status *out)
{
	memset(out, 0, sizeof(*out));
	out->strategy = router_strategy(cfg, cfg->self);
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	*out = a->st;
	pthread_mutex_unlock(&a->lock);
}

int autosync_flush(struct autosync *a, int seconds)
{
	int64_t deadline = mono_ns() + (int64_t)seconds * NS_PER_S, next_log = 0;
	struct own_walk w;
	int ret;

	if (!a || a->strategy != CFG_STRATEGY_EPHEMERAL)
		return 0;
	for (;;) {
		ret = walk_own(a, &w);
		own_walk_free(&w);
		if (ret == 0 && w.unreplicated_files == 0) {
			log_msg(LOG_INFO,
				"autosync: shutdown: every own file has %d copies elsewhere",
				a->cfg->sync_routing.replication_target);
			return 0;
		}
		if (mono_ns() >= deadline) {
			log_msg(LOG_WARNING, "autosync: shutdown: %" PRIu64 " own file%s (%" PRIu64
				" bytes) still without %d copies elsewhere after %d s",
				w.unreplicated_files, w.unreplicated_files == 1 ? "" : "s",
				w.unreplicated_bytes, a->cfg->sync_routing.replication_target,
				seconds);
			return -ETIMEDOUT;
		}
		if (mono_ns() >= next_log) {
			log_msg(LOG_INFO,
				"autosync: shutdown: waiting for %" PRIu64 " own file%s (%" PRIu64
				" bytes) to be replicated (at most %d s)",
				w.unreplicated_files, w.unreplicated_files == 1 ? "" : "s",
				w.unreplicated_bytes, seconds);
			next_log = mono_ns() + 2 * NS_PER_S;
		}
		announce(a);
		nanosleep(&(struct timespec){ .tv_nsec = 250 * 1000000L }, NULL);
	}
}
