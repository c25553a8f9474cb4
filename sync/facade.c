/*
 * facade — the daemon side of `meshfs sync` (see facade.h for the protocol and the bounds).
 *
 * facade_sync() runs on the control thread: it walks the namespace (ns_readdir / ns_info, an
 * explicit stack of directories, no recursion), counts what matches, and makes a job of the
 * files that have to be fetched: one small item per file (inode, version hash, size). The
 * "meshfs-sync" worker then advances every unfinished job each FACADE_TICK_MS: it looks at the
 * items in the job's window (namespace, cache and fetcher state, nothing stored twice), moves
 * the finished ones out (cached and verified, failed with the fetcher's last error, or gone),
 * and hands the next items to the fetcher through the same path as the user.meshfs.prefetch
 * xattr (xattr_set), so that at most FACADE_WINDOW files of a job are queued there at once.
 * A version replaced while it is fetched is queued again (at most FACADE_MAX_REQUEUES times).
 *
 * When the fetcher gives up on a file (no source left, a cache write failed) it is no longer
 * busy and not complete: that is the failure, with its reason. Two bounds stop a job that the
 * fetcher never fails: when none of the files in its window gets a byte for twice
 * auto_sync.read_deadline_seconds they fail ("no data for N s"), and a job fails whatever is
 * still pending after 300 s plus one second per MiB it had to fetch.
 *
 * Locking: fc->lock protects the job list and each job's published part (counts, failures,
 * finished). It is never held across a namespace, cache, fetch, catalog or xattr call: the
 * worker owns a published job's items and window alone, and publishes its counts under the
 * lock at the end of each tick. Only the worker frees jobs.
 */
#include "sync/facade.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sync/cache.h"
#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/fetch.h"
#include "sync/hash.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/util.h"
#include "sync/xattrs.h"

#define FACADE_MAX_JOBS 16		/* unfinished jobs at once */
#define FACADE_MAX_FILES (1 << 20)	/* items of every job together */
#define FACADE_WINDOW 64		/* files of one job queued in the fetcher at once */
#define FACADE_MAX_LISTED_FAILURES 100
#define FACADE_MAX_REQUEUES 3
#define FACADE_TICK_MS 100
#define FACADE_LINGER_S 60		/* a finished job nobody asked about is kept this long */
#define FACADE_BOUND_BASE_S 300		/* a job's time bound: this + 1 s per MiB to fetch */
#define FACADE_BOUND_BYTES_PER_S (1 << 20)
#define FACADE_STALL_FACTOR 2		/* x read_deadline_seconds without a byte: failed */

static const char *const priorities[] = { "low", "normal", "high", "critical" };

/* A file of a job that has to be fetched. */
struct sync_item {
	uint64_t ino;
	struct hash128 hash;	/* the version being fetched */
	uint64_t size;
	uint64_t fetched;	/* bytes of it present at the last look */
	int16_t host;		/* the shown version's host (failure lines); -1 unknown */
	uint8_t requeues;
};

struct sync_counts {
	int64_t files, bytes;			/* matched */
	int64_t verified_files, verified_bytes;	/* local and verified (here, or cached) */
	int64_t fetched_bytes;			/* verified + present of those pending */
	int64_t failed_files;
	int64_t queued_files, queued_bytes;	/* had to be fetched when the job began */
};

struct sync_failure {
	char *path;
	char *host;
	char *error;
};

struct sync_job {
	struct sync_job *next;
	int64_t id;
	char what[64];
	const char *prio;	/* one of priorities[] */
	bool no_wait;
	int64_t started_ns;
	int64_t deadline_ns;
	int64_t bound_s;
	/* The worker's alone once the job is published (the control thread fills them first): */
	struct sync_item *items;
	size_t n_items;
	size_t next_item;	/* first item not handed to the fetcher yet */
	size_t win[FACADE_WINDOW]; /* items queued in the fetcher */
	size_t n_win;
	int64_t last_progress_ns;
	struct sync_counts wc;	/* the worker's counts, published into c each tick */
	/* Under fc->lock once published: */
	struct sync_counts c;
	struct sync_failure failed[FACADE_MAX_LISTED_FAILURES];
	size_t n_failed;
	bool finished;
	bool collected;		/* reported finished to a client */
	int64_t last_poll_ns;
};

struct facade {
	struct daemon *d;
	struct ns_info *info;	/* the worker's scratch (it carries a PATH_MAX path) */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* a new job, or stop */
	/* Under lock: */
	struct sync_job *jobs;
	size_t tracked;		/* items of every job in the list */
	int64_t next_id;
	bool stop;
};

bool facade_name_matches(const char *name, const char *board_type, int num_players)
{
	const char *base = strrchr(name, '/');
	char want[160];

	base = base ? base + 1 : name;
	if (board_type && *board_type && num_players > 0) {
		snprintf(want, sizeof(want), "_%s_%dp", board_type, num_players);
		return strstr(base, want) != NULL;
	}
	if (board_type && *board_type) {
		/* "_<board>_" followed by a player count: "_hex8_" must not match "_hex8x_". */
		snprintf(want, sizeof(want), "_%s_", board_type);
		for (const char *p = strstr(base, want); p; p = strstr(p + 1, want)) {
			const char *q = p + strlen(want);

			if (*q >= '0' && *q <= '9') {
				while (*q >= '0' && *q <= '9')
					q++;
				if (*q == 'p')
					return true;
			}
		}
		return false;
	}
	if (num_players > 0) {
		snprintf(want, sizeof(want), "_%dp", num_players);
		for (const char *p = strstr(base, want); p; p = strstr(p + 1, want)) {
			char after = p[strlen(want)];

			/* "_2p" must end the token: "_2p.db", "_2p_v3", not "_2px". */
			if (after == '\0' || after == '.' || after == '_' || after == '-')
				return true;
		}
		return false;
	}
	return true;
}

/* ------------------------------------------------------------------ jobs */

static void job_free(struct sync_job *job)
{
	if (!job)
		return;
	for (size_t i = 0; i < job->n_failed; i++) {
		free(job->failed[i].path);
		free(job->failed[i].host);
		free(job->failed[i].error);
	}
	free(job->items);
	free(job);
}

/*
 * Lists one failure of @job (the lock is taken when @fc is given: the job is published).
 * Beyond FACADE_MAX_LISTED_FAILURES failures are only counted, by the caller.
 */
static void job_list_failure(struct facade *fc, struct sync_job *job, const char *path,
			     const char *host, const char *error)
{
	struct sync_failure f = {
		.path = strdup(path),
		.host = strdup(host),
		.error = strdup(error),
	};

	if (fc)
		pthread_mutex_lock(&fc->lock);
	if (f.path && f.host && f.error && job->n_failed < FACADE_MAX_LISTED_FAILURES) {
		job->failed[job->n_failed++] = f;
		f.path = f.host = f.error = NULL;
	}
	if (fc)
		pthread_mutex_unlock(&fc->lock);
	free(f.path);
	free(f.host);
	free(f.error);
}

/* The answer about @job (lock held if it is published). */
static json_t *job_json(const struct sync_job *job)
{
	const struct sync_counts *c = &job->c;
	json_t *failed = json_array();

	if (!failed)
		return NULL;
	for (size_t i = 0; i < job->n_failed; i++)
		json_array_append_new(failed, json_pack("{s:s, s:s, s:s}", "path",
							job->failed[i].path, "host",
							job->failed[i].host, "error",
							job->failed[i].error));
	return json_pack("{s:I, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:b, "
			 "s:I, s:I}",
			 "job", (json_int_t)job->id,
			 "what", job->what,
			 "priority", job->prio,
			 "files", (json_int_t)c->files,
			 "bytes", (json_int_t)c->bytes,
			 "verified_files", (json_int_t)c->verified_files,
			 "verified_bytes", (json_int_t)c->verified_bytes,
			 "fetched_bytes", (json_int_t)c->fetched_bytes,
			 "queued_files", (json_int_t)c->queued_files,
			 "queued_bytes", (json_int_t)c->queued_bytes,
			 "failures", (json_int_t)c->failed_files,
			 "pending", (json_int_t)(c->files - c->verified_files - c->failed_files),
			 "failed", failed,
			 "finished", job->finished,
			 "deadline_s", (json_int_t)job->bound_s,
			 "elapsed_ms", (json_int_t)((mono_ns() - job->started_ns) / 1000000));
}

/* ------------------------------------------------------------------ the worker */

enum look {
	LOOK_GONE,	/* no longer a published file: not asked for any more */
	LOOK_HERE,	/* local, passthrough, or cached and verified */
	LOOK_NEED,	/* still to be fetched */
};

struct look_out {
	bool busy;		/* the fetcher has it queued or under way */
	bool changed;		/* another version is shown now: it->hash/size were updated */
	uint64_t old_size;
	uint64_t fetched;	/* bytes of the version present in the cache */
	char error[256];	/* the last fetch error ("" if none) */
};

/* Where @it stands now, from the namespace, the cache and the fetcher. Worker only. */
static enum look look_item(struct facade *fc, struct sync_item *it, struct look_out *o)
{
	struct daemon *d = fc->d;
	struct ns_info *info = fc->info;
	struct cache_info ci;
	char err[256];

	memset(o, 0, sizeof(*o));
	if (ns_info(d->ns, it->ino, info) < 0 || !info->is_file || !info->published ||
	    info->cat_idx < 0)
		return LOOK_GONE;
	if (ns_category_passthrough(d->ns, (size_t)info->cat_idx) ||
	    info->state != NS_STATE_REMOTE)
		return LOOK_HERE;
	if (!hash_equal(&info->hash, &it->hash)) {
		o->changed = true;
		o->old_size = it->size;
		it->hash = info->hash;
		it->size = info->size;
		it->fetched = 0;
		it->host = (int16_t)info->host_idx;
	}
	memset(&ci, 0, sizeof(ci));
	if (d->cache)
		cache_lookup(d->cache, d->cfg->categories[info->cat_idx].name, info->path, &ci);
	if (ci.state != CACHE_NONE && hash_equal(&ci.hash, &it->hash)) {
		if (ci.state == CACHE_COMPLETE)
			return LOOK_HERE;
		o->fetched = ci.cached_bytes;
	}
	snprintf(o->error, sizeof(o->error), "%s", ci.last_error);
	if (d->fetch) {
		o->busy = fetch_busy(d->fetch, &it->hash);
		if (fetch_last_error(d->fetch, &it->hash, err, sizeof(err)) && err[0])
			snprintf(o->error, sizeof(o->error), "%s", err);
	}
	return LOOK_NEED;
}

/* Counts @it as failed for @why and lists it (category/path from the namespace). */
static void item_failed(struct facade *fc, struct sync_job *job, const struct sync_item *it,
			const char *why)
{
	const struct mfs_config *cfg = fc->d->cfg;
	const char *host = "";
	char *path = NULL;

	job->wc.failed_files++;
	if (job->n_failed >= FACADE_MAX_LISTED_FAILURES) /* only the worker adds: no lock */
		return;
	if (ns_info(fc->d->ns, it->ino, fc->info) == 0 && fc->info->cat_idx >= 0) {
		if (asprintf(&path, "%s/%s", cfg->categories[fc->info->cat_idx].name,
			     fc->info->path) < 0)
			path = NULL;
	}
	if (it->host >= 0 && (size_t)it->host < cfg->n_hosts)
		host = cfg->hosts[it->host].name;
	job_list_failure(fc, job, path ? path : "?", host, why);
	log_msg(LOG_INFO, "sync job %lld: %s: %s", (long long)job->id, path ? path : "?", why);
	free(path);
}

static void item_done(struct sync_job *job, const struct sync_item *it)
{
	job->wc.verified_files++;
	job->wc.verified_bytes += (int64_t)it->size;
}

static void item_gone(struct sync_job *job, const struct sync_item *it)
{
	job->wc.files--;
	job->wc.bytes -= (int64_t)it->size;
}

/* Hands @it to the fetcher the way user.meshfs.prefetch does. False if it failed (counted). */
static bool item_queue(struct facade *fc, struct sync_job *job, struct sync_item *it)
{
	char why[300];
	int ret;

	ret = xattr_set(fc->d, it->ino, "user.meshfs.prefetch", job->prio, strlen(job->prio));
	if (ret == 0)
		return true;
	snprintf(why, sizeof(why), "cannot queue it for fetching: %s",
		 ret == -ENOTSUP ? "fetching is stopped" : strerror(-ret));
	item_failed(fc, job, it, why);
	return false;
}

/*
 * Looks at @it: settles it when it is gone or here (true; *progress set when it is here, if
 * @progress is given), else notes a size change of its version and returns false (it still
 * needs fetching; *o says more).
 */
static bool look_settles(struct facade *fc, struct sync_job *job, struct sync_item *it,
			 struct look_out *o, bool *progress)
{
	switch (look_item(fc, it, o)) {
	case LOOK_GONE:
		item_gone(job, it);
		return true;
	case LOOK_HERE:
		item_done(job, it);
		if (progress)
			*progress = true;
		return true;
	case LOOK_NEED:
		break;
	}
	if (o->changed)
		job->wc.bytes += (int64_t)it->size - (int64_t)o->old_size;
	return false;
}

/*
 * Looks at item @it of the window. Returns true when it leaves the window (done, gone or
 * failed); sets *progress when bytes of it arrived or it completed.
 */
static bool item_check(struct facade *fc, struct sync_job *job, struct sync_item *it,
		       bool *progress)
{
	struct look_out o;
	char why[300];

	if (look_settles(fc, job, it, &o, progress))
		return true;
	if (o.changed) {
		if (++it->requeues > FACADE_MAX_REQUEUES) {
			snprintf(why, sizeof(why), "a new version was published %d times while it "
				 "was being fetched", FACADE_MAX_REQUEUES + 1);
			item_failed(fc, job, it, why);
			return true;
		}
		return !item_queue(fc, job, it);
	}
	if (o.fetched > it->fetched)
		*progress = true;
	it->fetched = o.fetched;
	if (o.busy)
		return false;
	if (o.fetched >= it->size) {
		/* Every chunk is here, the whole-file check is not done yet: make sure the
		 * fetcher still holds the version so that it runs. */
		return !item_queue(fc, job, it);
	}
	item_failed(fc, job, it,
		    o.error[0] ? o.error : "the fetcher stopped without completing it");
	return true;
}

/* Hands the next items of @job to the fetcher until its window is full. */
static void job_fill(struct facade *fc, struct sync_job *job, int64_t now)
{
	bool was_empty = job->n_win == 0;
	struct look_out o;

	while (job->n_win < FACADE_WINDOW && job->next_item < job->n_items) {
		size_t idx = job->next_item++;
		struct sync_item *it = &job->items[idx];

		if (look_settles(fc, job, it, &o, NULL))
			continue;
		it->fetched = o.fetched;
		if (item_queue(fc, job, it))
			job->win[job->n_win++] = idx;
	}
	/* A fresh batch gets the whole stall period. */
	if (was_empty && job->n_win)
		job->last_progress_ns = now;
}

/* Fails what is still pending in @job's window (and, with @all, what is not queued yet). */
static void job_fail_pending(struct facade *fc, struct sync_job *job, const char *why, bool all)
{
	size_t end = all ? job->n_items : job->next_item;
	char msg[600];

	for (size_t k = 0; k < job->n_win + (end - job->next_item); k++) {
		size_t idx = k < job->n_win ? job->win[k] : job->next_item + (k - job->n_win);
		struct sync_item *it = &job->items[idx];
		struct look_out o;

		if (look_settles(fc, job, it, &o, NULL))
			continue;
		snprintf(msg, sizeof(msg), "%s%s%s", why, o.error[0] ? "; last error: " : "",
			 o.error);
		item_failed(fc, job, it, msg);
	}
	job->n_win = 0;
	job->next_item = end;
}

/* One step of @job: check the window, refill it, apply the bounds, publish the counts. */
static void job_tick(struct facade *fc, struct sync_job *job, int64_t now)
{
	int stall_s = FACADE_STALL_FACTOR * fc->d->cfg->auto_sync.read_deadline_seconds;
	bool progress = false, finished;
	char why[200];
	int64_t fetched;

	for (size_t k = 0; k < job->n_win;) {
		if (item_check(fc, job, &job->items[job->win[k]], &progress))
			job->win[k] = job->win[--job->n_win];
		else
			k++;
	}
	if (progress)
		job->last_progress_ns = now;
	if (now >= job->deadline_ns) {
		snprintf(why, sizeof(why), "not done within the sync's time bound of %lld s "
			 "(300 s + 1 s per MiB to fetch)", (long long)job->bound_s);
		job_fail_pending(fc, job, why, true);
	} else if (job->n_win && now - job->last_progress_ns > (int64_t)stall_s * 1000000000) {
		snprintf(why, sizeof(why),
			 "no data for %d s (twice auto_sync.read_deadline_seconds)", stall_s);
		job_fail_pending(fc, job, why, false);
	}
	job_fill(fc, job, now);

	fetched = job->wc.verified_bytes;
	for (size_t k = 0; k < job->n_win; k++)
		fetched += (int64_t)job->items[job->win[k]].fetched;
	job->wc.fetched_bytes = fetched;
	finished = job->n_win == 0 && job->next_item == job->n_items;
	if (finished)
		log_msg(LOG_INFO, "sync job %lld (%s): %lld of %lld files local and verified, "
			"%lld failed", (long long)job->id, job->what,
			(long long)job->wc.verified_files, (long long)job->wc.files,
			(long long)job->wc.failed_files);

	pthread_mutex_lock(&fc->lock);
	job->c = job->wc;
	job->finished = finished;
	pthread_mutex_unlock(&fc->lock);
}

/* Whether @job can be freed: finished, and reported or nobody is going to ask. Lock held. */
static bool job_expired(const struct sync_job *job, int64_t now)
{
	return job->finished && (job->no_wait || job->collected ||
				 now - job->last_poll_ns > (int64_t)FACADE_LINGER_S * 1000000000);
}

static void *sync_thread(void *arg)
{
	struct facade *fc = arg;

	pthread_setname_np(pthread_self(), "meshfs-sync");
	pthread_mutex_lock(&fc->lock);
	while (!fc->stop) {
		struct sync_job *todo[FACADE_MAX_JOBS], *dead = NULL, **pp;
		int64_t now = mono_ns();
		size_t n = 0;

		for (pp = &fc->jobs; *pp;) {
			struct sync_job *job = *pp;

			if (job_expired(job, now)) {
				*pp = job->next;
				fc->tracked -= job->n_items;
				job->next = dead;
				dead = job;
				continue;
			}
			if (!job->finished && n < FACADE_MAX_JOBS)
				todo[n++] = job;
			pp = &job->next;
		}
		pthread_mutex_unlock(&fc->lock);
		while (dead) {
			struct sync_job *next = dead->next;

			job_free(dead);
			dead = next;
		}
		for (size_t i = 0; i < n; i++)
			job_tick(fc, todo[i], now);
		pthread_mutex_lock(&fc->lock);
		if (fc->stop)
			break;
		if (!fc->jobs) {
			pthread_cond_wait(&fc->cond, &fc->lock);
		} else {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += FACADE_TICK_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&fc->cond, &fc->lock, &ts);
		}
	}
	pthread_mutex_unlock(&fc->lock);
	return NULL;
}

int facade_start(struct daemon *d, struct facade **out)
{
	struct facade *fc = calloc(1, sizeof(*fc));
	pthread_condattr_t ca;
	int ret;

	if (!fc)
		return -ENOMEM;
	fc->d = d;
	fc->next_id = now_ns() / 1000; /* ids of a restarted daemon do not repeat old ones */
	fc->info = malloc(sizeof(*fc->info));
	if (!fc->info) {
		free(fc);
		return -ENOMEM;
	}
	pthread_mutex_init(&fc->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fc->cond, &ca);
	pthread_condattr_destroy(&ca);
	ret = -pthread_create(&fc->thread, NULL, sync_thread, fc);
	if (ret < 0) {
		log_msg(LOG_ERR, "sync: cannot start thread: %s", strerror(-ret));
		facade_stop(fc);
		return ret;
	}
	fc->thread_started = true;
	*out = fc;
	return 0;
}

void facade_quiesce(struct facade *fc)
{
	bool join;

	if (!fc)
		return;
	pthread_mutex_lock(&fc->lock);
	fc->stop = true;
	join = fc->thread_started;
	fc->thread_started = false;
	pthread_cond_signal(&fc->cond);
	pthread_mutex_unlock(&fc->lock);
	if (join)
		pthread_join(fc->thread, NULL);
}

void facade_stop(struct facade *fc)
{
	if (!fc)
		return;
	facade_quiesce(fc);
	while (fc->jobs) {
		struct sync_job *next = fc->jobs->next;

		job_free(fc->jobs);
		fc->jobs = next;
	}
	pthread_cond_destroy(&fc->cond);
	pthread_mutex_destroy(&fc->lock);
	free(fc->info);
	free(fc);
}

/* ------------------------------------------------------------------ the request */

struct sync_walk {
	struct facade *fc;
	struct daemon *d;
	int cat;		/* -1 = all */
	const char *board_type;
	int num_players;
	int host;		/* index into cfg->hosts; -1 = any */
	struct ns_info *info;
	uint64_t *dirs;		/* directories still to list */
	size_t n_dirs, cap_dirs;
	size_t cap_items;
	struct sync_job *job;
	bool at_root;
	off_t last;		/* readdir paging of the directory being listed */
	int listed;
	int ret;
};

static int walk_push_dir(struct sync_walk *w, uint64_t ino)
{
	if (w->n_dirs == w->cap_dirs) {
		size_t cap = w->cap_dirs ? w->cap_dirs * 2 : 64;
		uint64_t *dirs = realloc(w->dirs, cap * sizeof(*dirs));

		if (!dirs)
			return -ENOMEM;
		w->dirs = dirs;
		w->cap_dirs = cap;
	}
	w->dirs[w->n_dirs++] = ino;
	return 0;
}

/* Counts file @ino if it matches, and makes it an item when it has to be fetched. */
static int walk_file(struct sync_walk *w, uint64_t ino)
{
	const struct mfs_config *cfg = w->d->cfg;
	struct sync_job *job = w->job;
	struct ns_info *info = w->info;
	struct cache_info ci;
	struct sync_item *it;

	if (ns_info(w->d->ns, ino, info) < 0 || !info->is_file || !info->published ||
	    info->cat_idx < 0)
		return 0; /* gone meanwhile, or still being written here */
	if (!facade_name_matches(info->path, w->board_type, w->num_players))
		return 0;
	if (w->host >= 0 && (w->host >= 64 || !(info->sources & ((uint64_t)1 << w->host))))
		return 0;
	job->wc.files++;
	job->wc.bytes += (int64_t)info->size;
	if (ns_category_passthrough(w->d->ns, (size_t)info->cat_idx) ||
	    info->state != NS_STATE_REMOTE)
		goto verified;
	memset(&ci, 0, sizeof(ci));
	if (w->d->cache)
		cache_lookup(w->d->cache, cfg->categories[info->cat_idx].name, info->path, &ci);
	if (ci.state == CACHE_COMPLETE && hash_equal(&ci.hash, &info->hash))
		goto verified;
	if (job->n_items == w->cap_items) {
		size_t cap = w->cap_items ? w->cap_items * 2 : 256;

		if (job->n_items >= FACADE_MAX_FILES)
			return -E2BIG;
		it = realloc(job->items, cap * sizeof(*it));
		if (!it)
			return -ENOMEM;
		job->items = it;
		w->cap_items = cap;
	}
	it = &job->items[job->n_items++];
	memset(it, 0, sizeof(*it));
	it->ino = ino;
	it->hash = info->hash;
	it->size = info->size;
	it->host = (int16_t)(info->host_idx < INT16_MAX ? info->host_idx : -1);
	job->wc.queued_files++;
	job->wc.queued_bytes += (int64_t)info->size;
	return 0;
verified:
	job->wc.verified_files++;
	job->wc.verified_bytes += (int64_t)info->size;
	return 0;
}

static int walk_child(void *arg, const char *name, const struct stat *st, uint64_t nodeid,
		      off_t next)
{
	struct sync_walk *w = arg;
	int cat;

	w->last = next;
	w->listed++;
	if (!nodeid || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return 0;
	if (w->at_root) {
		/* Only the category dirs asked for; /.hosts is not a category. */
		cat = config_category_index(w->d->cfg, name);
		if (S_ISDIR(st->st_mode) && cat >= 0 && (w->cat < 0 || cat == w->cat))
			w->ret = walk_push_dir(w, nodeid);
	} else if (S_ISDIR(st->st_mode)) {
		w->ret = walk_push_dir(w, nodeid);
	} else if (S_ISREG(st->st_mode)) {
		w->ret = walk_file(w, nodeid);
	}
	return w->ret < 0;
}

/* Walks the selected categories of the namespace into w->job. 0 or -errno. */
static int walk(struct sync_walk *w)
{
	int ret = walk_push_dir(w, NS_ROOT_INO);

	while (ret == 0 && w->n_dirs > 0) {
		uint64_t dir = w->dirs[--w->n_dirs];

		w->at_root = dir == NS_ROOT_INO;
		w->last = 0;
		/* ns_readdir lists one batch per call: go on from the last cookie. */
		do {
			w->listed = 0;
			ret = ns_readdir(w->d->ns, dir, w->last, false, walk_child, w);
		} while (ret == 0 && w->ret == 0 && w->listed > 0);
		if (ret == -ENOENT || ret == -ENOTDIR)
			ret = 0; /* removed while we walked */
		if (ret == 0)
			ret = w->ret;
	}
	return ret;
}

static json_t *usage_error(const char *a, const char *b, const char *c)
{
	return json_pack("{s:s+++, s:b}", "error", a, b ? b : "", c ? c : "", "usage", 1);
}

json_t *facade_sync(struct facade *fc, json_t *req)
{
	struct daemon *d = fc->d;
	const struct mfs_config *cfg = d->cfg;
	const char *what = json_string_value(json_object_get(req, "what"));
	const char *prio = json_string_value(json_object_get(req, "priority"));
	const char *host = json_string_value(json_object_get(req, "host"));
	struct sync_walk w = { .fc = fc, .d = d, .cat = -1, .host = -1 };
	struct sync_job *job = NULL;
	const struct cfg_host *h;
	json_t *resp = NULL;
	size_t i, unfinished = 0;
	int ret;

	w.board_type = json_string_value(json_object_get(req, "board_type"));
	w.num_players = (int)json_integer_value(json_object_get(req, "num_players"));
	if (what && strcmp(what, "all") != 0) {
		w.cat = config_category_index(cfg, what);
		if (w.cat < 0)
			return usage_error("unknown category '", what, "'");
	}
	for (i = 0; prio && i < ARRAY_SIZE(priorities); i++)
		if (strcmp(prio, priorities[i]) == 0)
			break;
	if (prio && i == ARRAY_SIZE(priorities))
		return usage_error("unknown priority '", prio, "' (low, normal, high or critical)");
	if (host) {
		h = config_find_host(cfg, host);
		if (!h)
			return usage_error("unknown host '", host, "'");
		w.host = (int)(h - cfg->hosts);
	}

	job = calloc(1, sizeof(*job));
	w.info = malloc(sizeof(*w.info));
	if (!job || !w.info)
		goto out;
	w.job = job;
	snprintf(job->what, sizeof(job->what), "%s", what ? what : "all");
	job->prio = prio ? priorities[i] : "normal";
	job->no_wait = json_is_true(json_object_get(req, "no_wait"));
	job->started_ns = job->last_progress_ns = job->last_poll_ns = mono_ns();

	if (host && strcmp(host, cfg->node) != 0) {
		int64_t seq = 0;

		/* A peer whose manifest was never pulled may hold anything: say so. */
		if (catalog_max_seq(d->catalog, host, &seq) < 0 || seq == 0) {
			job->wc.failed_files++;
			job_list_failure(NULL, job, "", host,
					 "host never reached: no manifest from it");
		}
	}
	ret = walk(&w);
	if (ret < 0) {
		resp = ret == -E2BIG ? json_pack("{s:s, s:b}", "error",
						  "more files to fetch than one sync can track "
						  "(1048576): narrow it with a category or "
						  "--board-type/--num-players", "usage", 1)
				     : json_pack("{s:s+}", "error", "walking the namespace: ",
						 strerror(-ret));
		goto out;
	}
	job->bound_s = FACADE_BOUND_BASE_S + job->wc.queued_bytes / FACADE_BOUND_BYTES_PER_S;
	job->deadline_ns = job->started_ns + job->bound_s * 1000000000;
	job->wc.fetched_bytes = job->wc.verified_bytes;
	job->c = job->wc;
	log_msg(LOG_INFO, "sync %s: %lld files matched, %lld local and verified, %lld to fetch "
		"at %s priority", job->what, (long long)job->wc.files,
		(long long)job->wc.verified_files, (long long)job->wc.queued_files, job->prio);
	if (job->n_items == 0) {
		job->finished = true;
		resp = job_json(job);
		goto out;
	}

	pthread_mutex_lock(&fc->lock);
	if (fc->stop) {
		pthread_mutex_unlock(&fc->lock);
		resp = json_pack("{s:s}", "error", "the daemon is shutting down");
		goto out;
	}
	for (struct sync_job *j = fc->jobs; j; j = j->next)
		unfinished += !j->finished;
	if (unfinished >= FACADE_MAX_JOBS || fc->tracked + job->n_items > FACADE_MAX_FILES) {
		pthread_mutex_unlock(&fc->lock);
		resp = json_pack("{s:s}", "error",
				 "too many syncs under way in this daemon; wait for one to finish");
		goto out;
	}
	job->id = fc->next_id++;
	job->next = fc->jobs;
	fc->jobs = job;
	fc->tracked += job->n_items;
	resp = job_json(job);
	pthread_cond_signal(&fc->cond);
	pthread_mutex_unlock(&fc->lock);
	job = NULL; /* the worker's now */
out:
	job_free(job);
	free(w.info);
	free(w.dirs);
	return resp;
}

json_t *facade_progress(struct facade *fc, json_t *req)
{
	json_t *id = json_object_get(req, "job");
	struct sync_job *job;
	json_t *resp = NULL;

	if (!json_is_integer(id))
		return usage_error("sync_progress needs a job id", NULL, NULL);
	pthread_mutex_lock(&fc->lock);
	for (job = fc->jobs; job; job = job->next)
		if (job->id == (int64_t)json_integer_value(id))
			break;
	if (job) {
		job->last_poll_ns = mono_ns();
		resp = job_json(job);
		if (resp && job->finished)
			job->collected = true;
	}
	pthread_mutex_unlock(&fc->lock);
	if (!job)
		resp = json_pack("{s:s}", "error",
				 "no such sync job (it finished and was reported, or the daemon "
				 "restarted)");
	return resp;
}
