/*
 * indexer — keeps the catalog in step with this node's own data directories.
 *
 * One thread, "meshfs-index", owns all the working state (the fields below the lock in
 * struct indexer). Other threads only queue jobs (full scan, check one path, stop) and wake
 * it through an eventfd; the thread sleeps in poll() on that eventfd and one inotify fd, with
 * a timeout to whichever comes first: the earliest pending check or the periodic rescan.
 *
 * A full scan walks each category directory depth-first, one directory open at a time, never
 * following symlinks. A regular file whose (dev, ino, size, mtime, ctime) equals what the
 * catalog recorded when it was hashed is only counted. Any other is hashed once it is quiet
 * (unchanged for publish_quiet_seconds); until then it sits in the pending set, due when it
 * should have become quiet. Every inotify event lands in the same pending set, keyed by path,
 * so a burst of writes to one file costs one check. After a complete walk, catalog entries and
 * known directories that were not met are verified with lstat() before being reported gone, so
 * an unreadable directory or a vanished category root (unmounted storage) deletes nothing.
 *
 * Hashing streams the file through hash_fd() and is trusted only when fstat() shows the same
 * size and mtime afterwards. A long scan pauses every few milliseconds to serve its queue and
 * drain inotify, so a publish-now or a stop waits for at most the file in hand (and the
 * commit of its batch).
 *
 * Hashed files are published in batches, one catalog transaction each (a commit per file was
 * most of the cost of indexing many small files). A batch is committed when it is full, at
 * every service pause (before any job or event is handled), before the thread deletes or lists
 * entries or sleeps, and before a path already in it is looked at again: so it never outlives
 * SERVICE_NS by much, and the thread's own decisions see the catalog as if each file had been
 * published at once. The owner hears of each file (ops->published) once its batch is
 * committed. A rename or unlink through the mount (other threads) that meets a file still in
 * a batch misses it, as it always could miss a file being hashed; the inotify event of that
 * rename or unlink has the path looked at again and set right.
 *
 * indexer_renamed()/indexer_removed() run on the caller's thread and touch only the catalog
 * (which has its own mutex) and the stats (under ix->lock); they never see the thread's sets.
 *
 * The module is three files. indexer.c (this one): the thread, its job queue, the pending
 * checks, inotify, hashing and publishing, and the public API. indexer_walk.c: looking at one
 * path, walking directory trees, the full scan and what it settles afterwards. pathset.c: the
 * hash sets the thread keeps (pending checks, known dirs, watches, warned paths).
 * indexer_int.h holds struct indexer and what the two indexer files share.
 */
#include "sync/indexer.h"
#include "sync/indexer_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sync/hash.h"
#include "sync/log.h"
#include "sync/pathset.h"
#include "sync/util.h"

#define DEFAULT_RESCAN_SECONDS 300
/* Queued checks beyond this turn into one full rescan instead. */
#define MAX_JOBS 4096
/* Pending checks beyond this are dropped and a rescan is brought forward. */
#define MAX_PENDING 65536
/* Files remembered as "already warned about in this scan"; past it, further warnings are
 * only debug lines. */
#define MAX_UNREADABLE_LOGGED 4096
/* How often a long scan stops to serve jobs and inotify. */
#define SERVICE_NS (20 * NS_PER_MS)
/* Shortest wait before a file that changed under us is looked at again. */
#define RETRY_NS (200 * NS_PER_MS)
/* Upper bound on one poll() so a lost wakeup can never stall the thread for long. */
#define MAX_SLEEP_MS (60 * 1000)
/* inotify reads per service round; the rest waits for the next round. */
#define MAX_EVENT_READS 16

#define WATCH_MASK                                                                         \
	(IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | \
	 IN_MOVE_SELF | IN_ATTRIB | IN_MODIFY | IN_ONLYDIR)

/* --- small helpers ------------------------------------------------------------------------ */

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * NS_PER_SEC + ts->tv_nsec;
}

static void sig_of(const struct stat *st, struct fsig *sig)
{
	sig->dev = st->st_dev;
	sig->ino = st->st_ino;
	sig->size = st->st_size;
	sig->mtime_ns = ts_ns(&st->st_mtim);
	sig->ctime_ns = ts_ns(&st->st_ctim);
}

static bool sig_equal(const struct fsig *a, const struct fsig *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

bool indexer_ends_with_writing(const char *name)
{
	size_t n = strlen(name);

	return n >= WRITING_LEN && strcmp(name + n - WRITING_LEN, WRITING_SUFFIX) == 0;
}

/* "dir/name", or "name" when @dir is the category root "". NULL on ENOMEM. */
char *indexer_rel_join(const char *dir, const char *name)
{
	char *out = NULL;

	if (!dir[0])
		out = strdup(name);
	else if (asprintf(&out, "%s/%s", dir, name) < 0)
		out = NULL;
	return out;
}

static void copy_entry_cb(void *arg, const struct cat_entry *e)
{
	struct entry_copy *c = arg;

	c->deleted = e->deleted;
	c->replica = strcmp(e->origin, e->host) != 0;
	c->size = e->size;
	c->mtime_ns = e->mtime_ns;
	c->hash = e->hash;
	c->dev = e->dev;
	c->ino = e->ino;
	c->ctime_ns = e->ctime_ns;
}

/* This node's entry (category @ci, @rel). 0, -ENOENT (also for a replica of another host's
 * file: a file appearing there is new, and wins), or another -errno from the catalog. */
static int get_entry(struct indexer *ix, size_t ci, const char *rel, struct entry_copy *out)
{
	int ret;

	memset(out, 0, sizeof(*out));
	ret = catalog_get(ix->cat, ix->cfg->node, indexer_cat_name(ix, ci), rel, copy_entry_cb,
			  out);
	if (ret == 0 && out->replica) {
		memset(out, 0, sizeof(*out));
		ret = -ENOENT;
	}
	return ret;
}

static bool identity_matches(const struct entry_copy *c, const struct stat *st)
{
	return c->dev == (uint64_t)st->st_dev && c->ino == (uint64_t)st->st_ino &&
	       c->size == (uint64_t)st->st_size && c->mtime_ns == ts_ns(&st->st_mtim) &&
	       c->ctime_ns == ts_ns(&st->st_ctim);
}

void indexer_path_list_free(struct path_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->items[i].path);
	free(l->items);
	memset(l, 0, sizeof(*l));
}

struct collect_ctx {
	struct indexer *ix;
	struct path_list *list;
	size_t only_cat;	/* SIZE_MAX: every configured category */
	const char *under;	/* NULL: every path; else paths strictly below this dir */
};

/* Runs under the catalog mutex: copies, never calls back into the catalog. */
static int collect_cb(void *arg, const struct cat_entry *e)
{
	struct collect_ctx *c = arg;
	struct path_list *l = c->list;
	int ci = config_category_index(c->ix->cfg, e->category);
	size_t n;

	if (ci < 0 || (c->only_cat != SIZE_MAX && (size_t)ci != c->only_cat))
		return 0;
	if (strcmp(e->origin, c->ix->cfg->node) != 0)
		return 0; /* a replica of another host's file: no file of ours (catalog_replicas.c)
			   */
	if (c->under) {
		n = strlen(c->under);
		if (strncmp(e->path, c->under, n) != 0 || e->path[n] != '/')
			return 0;
	}
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 64;
		void *bigger = realloc(l->items, ncap * sizeof(*l->items));

		if (!bigger)
			return -ENOMEM;
		l->items = bigger;
		l->cap = ncap;
	}
	l->items[l->n].path = strdup(e->path);
	if (!l->items[l->n].path)
		return -ENOMEM;
	l->items[l->n].cat = ci;
	l->n++;
	return 0;
}

/* Live entries of this node, filtered as in struct collect_ctx. 0 or -errno (list freed). */
int indexer_collect_entries(struct indexer *ix, size_t only_cat, const char *under,
			    struct path_list *out)
{
	struct collect_ctx c = { .ix = ix, .list = out, .only_cat = only_cat, .under = under };
	int ret;

	memset(out, 0, sizeof(*out));
	ret = catalog_foreach(ix->cat, ix->cfg->node, collect_cb, &c);
	if (ret < 0)
		indexer_path_list_free(out);
	return ret;
}

/* --- stats and warnings ------------------------------------------------------------------- */

/* Adjusts the live totals after a publish (@old: the entry it replaced, if live) or delete. */
static void stats_published(struct indexer *ix, const struct entry_copy *old, bool had_old,
			    uint64_t size, bool hashed)
{
	pthread_mutex_lock(&ix->lock);
	if (had_old && !old->deleted)
		ix->stats.bytes = ix->stats.bytes > old->size ? ix->stats.bytes - old->size : 0;
	else
		ix->stats.files++;
	ix->stats.bytes += size;
	if (hashed) {
		ix->stats.hashed_files++;
		ix->stats.hashed_bytes += size;
	}
	pthread_mutex_unlock(&ix->lock);
}

static void stats_deleted(struct indexer *ix, uint64_t size)
{
	pthread_mutex_lock(&ix->lock);
	if (ix->stats.files)
		ix->stats.files--;
	ix->stats.bytes = ix->stats.bytes > size ? ix->stats.bytes - size : 0;
	pthread_mutex_unlock(&ix->lock);
}

/*
 * Records that (category @ci, @rel) could not be read. Logged and counted once per path per
 * scan: a directory of unreadable files must not flood the log every time it is looked at.
 */
void indexer_note_unreadable(struct indexer *ix, size_t ci, const char *rel, bool is_dir,
			     int err)
{
	char line[sizeof(ix->stats.last_unreadable)];

	if (pset_find(&ix->warned, -1, ci, rel))
		return;
	snprintf(line, sizeof(line), "%s/%s%s: %s", indexer_cat_name(ix, ci), rel,
		 is_dir && rel[0] ? "/" : "", strerror(err));
	if (ix->warned.count < MAX_UNREADABLE_LOGGED && pset_add(&ix->warned, -1, ci, rel)) {
		log_msg(LOG_WARNING, "indexer: skipping unreadable %s %s",
			is_dir ? "directory" : "file", line);
	} else {
		log_msg(LOG_DEBUG, "indexer: skipping unreadable %s", line);
	}
	if (ix->scanning) {
		ix->scan_unreadable++;
		snprintf(ix->scan_last_unreadable, sizeof(ix->scan_last_unreadable), "%s", line);
	} else {
		pthread_mutex_lock(&ix->lock);
		ix->stats.unreadable++;
		snprintf(ix->stats.last_unreadable, sizeof(ix->stats.last_unreadable), "%s", line);
		pthread_mutex_unlock(&ix->lock);
	}
}

/* --- job queue ---------------------------------------------------------------------------- */

static void wake(struct indexer *ix)
{
	uint64_t one = 1;

	/* EAGAIN means the counter is already non-zero: the thread will wake anyway. */
	if (write(ix->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_msg(LOG_DEBUG, "indexer: wake: %s", strerror(errno));
}

static void free_job(struct job *j)
{
	if (j && !j->embedded) {
		free(j->path);
		free(j);
	}
}

/* Queues @j (taken). A stop goes first; a full queue turns checks into one rescan. */
static void push_job(struct indexer *ix, struct job *j)
{
	pthread_mutex_lock(&ix->lock);
	if (j->kind == JOB_CHECK && ix->n_jobs >= MAX_JOBS)
		j->kind = JOB_SCAN;
	if (j->kind == JOB_SCAN && ix->scan_queued)
		goto out;
	if (j->kind == JOB_SCAN)
		ix->scan_queued = true;
	if (j->kind == JOB_STOP) {
		j->next = ix->head;
		ix->head = j;
		if (!ix->tail)
			ix->tail = j;
	} else {
		j->next = NULL;
		if (ix->tail)
			ix->tail->next = j;
		else
			ix->head = j;
		ix->tail = j;
	}
	ix->n_jobs++;
	j = NULL;
out:
	pthread_mutex_unlock(&ix->lock);
	free_job(j);
	wake(ix);
}

/* Queues a new scan or check job; takes @path. */
static void queue_job(struct indexer *ix, enum job_kind kind, size_t ci, char *path)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j) {
		j->kind = kind;
		j->cat = ci;
		j->path = path;
		push_job(ix, j);
	} else {
		log_msg(LOG_ERR, "indexer: out of memory queueing a job");
		free(path);
	}
}

static struct job *pop_job(struct indexer *ix)
{
	struct job *j;

	pthread_mutex_lock(&ix->lock);
	j = ix->head;
	if (j) {
		ix->head = j->next;
		if (!ix->head)
			ix->tail = NULL;
		ix->n_jobs--;
		if (j->kind == JOB_SCAN)
			ix->scan_queued = false;
	}
	pthread_mutex_unlock(&ix->lock);
	return j;
}

static void drain_jobs(struct indexer *ix)
{
	struct job *j;

	while (!ix->stopping && (j = pop_job(ix))) {
		switch (j->kind) {
		case JOB_STOP:
			ix->stopping = true;
			break;
		case JOB_SCAN:
			ix->scan_wanted = true;
			break;
		case JOB_CHECK:
			indexer_check_path(ix, j->cat, j->path, true, NULL);
			break;
		}
		free_job(j);
	}
}

/* A stop is always queued first, so a glance at the head is enough. */
static void peek_stop(struct indexer *ix)
{
	pthread_mutex_lock(&ix->lock);
	if (ix->head && ix->head->kind == JOB_STOP)
		ix->stopping = true;
	pthread_mutex_unlock(&ix->lock);
}

/* --- pending checks ----------------------------------------------------------------------- */

static void pending_overflow(struct indexer *ix)
{
	/* Not "rescan now": a rescan of a tree still being written would overflow again at once. */
	int64_t when = mono_ns() + ix->quiet_ns + 5 * NS_PER_SEC;

	if (when < ix->next_rescan)
		ix->next_rescan = when;
	if (!ix->pending_full_logged) {
		log_msg(LOG_WARNING, "indexer: more than %d paths waiting to be checked; "
			"falling back to a rescan", MAX_PENDING);
		ix->pending_full_logged = true;
	}
}

/* The pending entry for (@ci, @rel), added if need be; NULL when the set is full. */
static struct pent *pending_get(struct indexer *ix, size_t ci, const char *rel)
{
	struct pent *e = pset_find(&ix->pending, -1, ci, rel);

	if (!e && ix->pending.count < MAX_PENDING)
		e = pset_add(&ix->pending, -1, ci, rel);
	if (!e)
		pending_overflow(ix);
	return e;
}

static void pending_set_due(struct indexer *ix, struct pent *e, int64_t due)
{
	if (due > e->due)
		e->due = due;
	if (e->due < ix->next_due)
		ix->next_due = e->due;
}

/* Looks at (@ci, @rel) again no earlier than @delay_ns from now. */
static void pend(struct indexer *ix, size_t ci, const char *rel, int64_t delay_ns)
{
	struct pent *e = pending_get(ix, ci, rel);

	if (e)
		pending_set_due(ix, e, mono_ns() + delay_ns);
}

/* Looks at a not-yet-quiet file again at @due, remembering how it looked (see is_quiet). */
static void pend_file(struct indexer *ix, size_t ci, const char *rel, const struct stat *st,
		      int64_t due, const struct pent *prev)
{
	struct pent *e = pending_get(ix, ci, rel);
	struct fsig sig;

	if (!e)
		return;
	sig_of(st, &sig);
	if (prev && prev != e && prev->has_sig) {
		e->sig = prev->sig;
		e->seen_at = prev->seen_at;
		e->has_sig = true;
	}
	if (!e->has_sig || !sig_equal(&e->sig, &sig)) {
		e->sig = sig;
		e->seen_at = mono_ns();
		e->has_sig = true;
	}
	pending_set_due(ix, e, due);
}

/*
 * True when the file has been unchanged for the quiet period. The timestamps decide, except
 * that a file whose identity we have watched stay the same for the whole period is quiet too:
 * otherwise a file stamped in the future (clock skew on shared storage, an extracted archive)
 * would wait until that time. Otherwise sets *due to when it might be quiet.
 */
static bool is_quiet(struct indexer *ix, const struct stat *st, const struct pent *prev,
		     int64_t *due)
{
	int64_t last = ts_ns(&st->st_mtim), age, wait_ns, mono;
	struct fsig sig;

	if (ix->quiet_ns <= 0)
		return true;
	if (ts_ns(&st->st_ctim) > last)
		last = ts_ns(&st->st_ctim);
	age = now_ns() - last;
	if (age >= ix->quiet_ns)
		return true;
	mono = mono_ns();
	sig_of(st, &sig);
	if (prev && prev->has_sig && sig_equal(&prev->sig, &sig) &&
	    mono - prev->seen_at >= ix->quiet_ns)
		return true;
	wait_ns = ix->quiet_ns - age;
	if (wait_ns > ix->quiet_ns)
		wait_ns = ix->quiet_ns;
	if (wait_ns < NS_PER_MS)
		wait_ns = NS_PER_MS;
	*due = mono + wait_ns;
	return false;
}

struct due_arg {
	int64_t now;
	int64_t next;
};

static bool pred_due(struct pent *e, void *arg)
{
	struct due_arg *d = arg;

	if (e->due <= d->now)
		return true;
	if (e->due < d->next)
		d->next = e->due;
	return false;
}

/* Looks at every pending path whose time has come. */
static void run_due(struct indexer *ix)
{
	struct due_arg d = { .now = mono_ns(), .next = INT64_MAX };
	struct pent *list;

	if (d.now < ix->next_due)
		return;
	list = pset_extract(&ix->pending, pred_due, &d);
	ix->next_due = d.next;
	if (ix->pending.count < MAX_PENDING / 2)
		ix->pending_full_logged = false;
	while (list) {
		struct pent *e = list;

		list = e->next;
		if (!ix->stopping)
			indexer_check_path(ix, e->cat, e->path, false, e);
		pset_entry_free(e);
		indexer_service(ix);
	}
}

/* --- inotify ------------------------------------------------------------------------------ */

/* Watches directory @full, known as (@ci, @rel). Returns the wd or -1. */
int indexer_add_watch(struct indexer *ix, size_t ci, const char *rel, const char *full)
{
	uint32_t mask = WATCH_MASK;
	struct pent *w;
	int wd;

	if (ix->ino_fd < 0)
		return -1;
	/* The category root may itself be a symlink (to a mount, say); nothing below it may. */
	if (rel[0])
		mask |= IN_DONT_FOLLOW;
	wd = inotify_add_watch(ix->ino_fd, full, mask);
	if (wd < 0) {
		if (errno == ENOSPC && !ix->watch_limit_logged) {
			log_msg(LOG_WARNING, "indexer: inotify watch limit reached at %s "
				"(raise fs.inotify.max_user_watches); changes below it are seen "
				"by the periodic rescan only", full);
			ix->watch_limit_logged = true;
		} else if (errno != ENOENT && errno != ENOTDIR) {
			log_msg(LOG_DEBUG, "indexer: inotify_add_watch %s: %s", full,
				strerror(errno));
		}
		return -1;
	}
	/* The same directory seen under a new name (moved) keeps its wd: follow the name. */
	w = pset_find(&ix->watches, wd, 0, NULL);
	if (w && (w->cat != ci || strcmp(w->path, rel) != 0)) {
		char *copy = strdup(rel);

		if (copy) {
			free(w->path);
			w->path = copy;
			w->cat = ci;
		}
	} else if (!w && !pset_add(&ix->watches, wd, ci, rel)) {
		inotify_rm_watch(ix->ino_fd, wd);
		wd = -1;
	}
	return wd;
}

/* Stops watching the dir (@ci, @rel) if @wd still stands for it. */
void indexer_drop_watch(struct indexer *ix, int wd, size_t ci, const char *rel)
{
	struct pent *w;

	if (wd < 0)
		return;
	w = pset_find(&ix->watches, wd, 0, NULL);
	if (!w || w->cat != ci || strcmp(w->path, rel) != 0)
		return;
	inotify_rm_watch(ix->ino_fd, wd);
	pset_del(&ix->watches, w);
}

static void handle_event(struct indexer *ix, const struct inotify_event *ev)
{
	struct pent *w;
	char *rel = NULL;
	size_t len;

	if (ev->mask & IN_Q_OVERFLOW) {
		log_msg(LOG_INFO, "indexer: inotify queue overflowed; rescanning");
		ix->scan_wanted = true;
		goto out;
	}
	w = pset_find(&ix->watches, ev->wd, 0, NULL);
	if (!w)
		goto out;
	if (ev->mask & IN_IGNORED) {
		pset_del(&ix->watches, w);
		goto out;
	}
	if (ev->len == 0 || !ev->name[0]) {
		/* The watched dir itself went away or moved: the check sorts out which. */
		if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF))
			pend(ix, w->cat, w->path, ix->quiet_ns);
		goto out;
	}
	rel = indexer_rel_join(w->path, ev->name);
	if (!rel) {
		ix->scan_wanted = true;
		goto out;
	}
	len = strlen(rel);
	if (indexer_ends_with_writing(rel)) {
		/* A sidecar came or went: its file may now be publishable, quiet or not yet. */
		rel[len - WRITING_LEN] = '\0';
		if (rel[0] && rel[strlen(rel) - 1] != '/')
			pend(ix, w->cat, rel, 0);
		goto out;
	}
	if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO))) {
		char *full = path_join(ix->catdir[w->cat], rel);
		size_t ci = w->cat;

		/* Watch before the walk so nothing created meanwhile is missed. A dir moved in
		 * gets the quiet period, so a rename made through the mount is recorded by
		 * indexer_renamed() before the walk would take its files for new ones. */
		if (full)
			indexer_add_watch(ix, ci, rel, full);
		free(full);
		pend(ix, ci, rel, (ev->mask & IN_CREATE) ? 0 : ix->quiet_ns);
		goto out;
	}
	if ((ev->mask & IN_ISDIR) && !(ev->mask & (IN_DELETE | IN_MOVED_FROM)))
		goto out;
	pend(ix, w->cat, rel, ix->quiet_ns);
out:
	free(rel);
}

/* Reads what inotify has queued, without blocking; bounded per call. */
static void read_events(struct indexer *ix)
{
	for (int round = 0; ix->ino_fd >= 0 && round < MAX_EVENT_READS; round++) {
		ssize_t n = read(ix->ino_fd, ix->events, sizeof(ix->events));
		const char *p;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno != EAGAIN)
				log_msg(LOG_WARNING, "indexer: reading inotify: %s",
					strerror(errno));
			break;
		}
		if (n == 0)
			break;
		for (p = ix->events; p < ix->events + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;

			handle_event(ix, ev);
			p += sizeof(*ev) + ev->len;
		}
	}
}

/*
 * Called between files of long work: serves queued jobs and inotify at most every SERVICE_NS.
 * Work started from here (a publish-now of a directory) only looks for a stop.
 */
void indexer_service(struct indexer *ix)
{
	int64_t now = mono_ns();

	if (now - ix->last_service < SERVICE_NS)
		return;
	ix->last_service = now;
	/* Before any job or event: they may look at a path of the batch. */
	indexer_flush_publishes(ix);
	if (ix->in_service) {
		peek_stop(ix);
		return;
	}
	ix->in_service = true;
	drain_jobs(ix);
	if (!ix->stopping)
		read_events(ix);
	ix->in_service = false;
}

/* --- publishing and deleting ------------------------------------------------------------- */

/* Deletes this node's live entry (@ci, @rel), calling ops->deleted when @notify. */
static int delete_entry(struct indexer *ix, size_t ci, const char *rel, bool notify)
{
	struct entry_copy old;
	int64_t seq = 0;
	int ret;

	ret = get_entry(ix, ci, rel, &old);
	if (ret < 0)
		goto out;
	if (old.deleted) {
		ret = -ENOENT;
		goto out;
	}
	ret = catalog_delete_local(ix->cat, ix->cfg->node, indexer_cat_name(ix, ci), rel, &seq);
	if (ret < 0)
		goto out;
	stats_deleted(ix, old.size);
	log_msg(LOG_DEBUG, "indexer: %s/%s deleted", indexer_cat_name(ix, ci), rel);
	if (notify && ix->ops.deleted)
		ix->ops.deleted(ix->arg, ci, rel);
out:
	if (ret < 0 && ret != -ENOENT)
		log_msg(LOG_WARNING, "indexer: deleting %s/%s from the catalog: %s",
			indexer_cat_name(ix, ci), rel, strerror(-ret));
	return ret;
}

/* delete_entry() from the indexer thread, which may have @rel in its publish batch. */
void indexer_drop_entry(struct indexer *ix, size_t ci, const char *rel)
{
	indexer_flush_publishes(ix);
	delete_entry(ix, ci, rel, true);
}

/*
 * Hashes @full (lstat'ed as @st) and publishes it. A file that changes while it is hashed is
 * left for a later look; one that cannot be opened or read is reported unreadable.
 */
static void hash_and_publish(struct indexer *ix, size_t ci, const char *rel, const char *full,
			     const struct stat *st, const struct entry_copy *old, bool had_old)
{
	int64_t retry = ix->quiet_ns > RETRY_NS ? ix->quiet_ns : RETRY_NS;
	struct hash128 whole, *chunks = NULL, *blocks = NULL;
	struct stat before, after;
	struct fsig looked, opened;
	struct pub_item *it;
	struct cat_entry *e;
	size_t n_chunks = 0, n_blocks = 0;
	uint64_t size = 0;
	char *path = NULL;
	int fd, ret;

	fd = open(full, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT || errno == ELOOP || errno == ENOTDIR)
			pend(ix, ci, rel, RETRY_NS);	/* replaced meanwhile: look again */
		else
			indexer_note_unreadable(ix, ci, rel, false, errno);
		goto out;
	}
	if (fstat(fd, &before) < 0) {
		indexer_note_unreadable(ix, ci, rel, false, errno);
		goto out;
	}
	sig_of(st, &looked);
	sig_of(&before, &opened);
	if (!S_ISREG(before.st_mode) || !sig_equal(&looked, &opened)) {
		/* Changed since it was judged quiet: judge it again. */
		pend(ix, ci, rel, retry);
		goto out;
	}
	ret = hash_fd_blocks(fd, &whole, &size, &chunks, &n_chunks, &blocks, &n_blocks);
	if (ret < 0) {
		indexer_note_unreadable(ix, ci, rel, false, -ret);
		goto out;
	}
	if (fstat(fd, &after) < 0) {
		indexer_note_unreadable(ix, ci, rel, false, errno);
		goto out;
	}
	if (after.st_size != before.st_size || (uint64_t)after.st_size != size ||
	    ts_ns(&after.st_mtim) != ts_ns(&before.st_mtim)) {
		log_msg(LOG_DEBUG, "indexer: %s/%s changed while hashed; later",
			indexer_cat_name(ix, ci), rel);
		pend(ix, ci, rel, retry);
		goto out;
	}
	/*
	 * Published even when the content is what the catalog has (a touch, a chmod, the same
	 * bytes copied over): recording the new identity is what keeps the next scan from
	 * hashing it again. Peers see the same hash under a new seq and fetch nothing.
	 */
	path = strdup(rel);
	if (!path) {
		log_msg(LOG_WARNING, "indexer: publishing %s/%s: %s", indexer_cat_name(ix, ci), rel,
			strerror(ENOMEM));
		goto out;
	}
	/* Never full here: a batch is committed as soon as it fills. */
	it = &ix->batch.items[ix->batch.n];
	e = &ix->batch.pubs[ix->batch.n].e;
	memset(e, 0, sizeof(*e));
	e->host = ix->cfg->node;
	e->category = indexer_cat_name(ix, ci);
	e->path = path;
	e->size = size;
	e->mtime_ns = ts_ns(&after.st_mtim);
	e->hash = whole;
	e->origin = ix->cfg->node;
	e->dev = after.st_dev;
	e->ino = after.st_ino;
	e->ctime_ns = ts_ns(&after.st_ctim);
	e->confirmed_at = now_s();
	ix->batch.pubs[ix->batch.n].chunks = chunks;
	ix->batch.pubs[ix->batch.n].n_chunks = n_chunks;
	ix->batch.pubs[ix->batch.n].blocks = blocks;
	ix->batch.pubs[ix->batch.n].n_blocks = n_blocks;
	ix->batch.pubs[ix->batch.n].seq = 0;
	it->cat = ci;
	it->path = path;
	it->chunks = chunks;
	it->blocks = blocks;
	it->old = *old;
	it->had_old = had_old;
	ix->batch.n++;
	chunks = NULL;
	blocks = NULL;
	if (ix->batch.n == PUBLISH_BATCH)
		indexer_flush_publishes(ix);
out:
	free(chunks);
	free(blocks);
	if (fd >= 0)
		close(fd);
}

/* Whether (@ci, @rel) waits in the publish batch. */
static bool batch_has(const struct indexer *ix, size_t ci, const char *rel)
{
	for (size_t i = 0; i < ix->batch.n; i++)
		if (ix->batch.items[i].cat == ci && strcmp(ix->batch.items[i].path, rel) == 0)
			return true;
	return false;
}

/*
 * Commits the publish batch in one transaction and tells the owner about each file. When the
 * batch as a whole fails, each file is tried on its own, so one bad entry (or a commit that
 * failed for a moment) costs only itself, as when every file had its own transaction.
 */
void indexer_flush_publishes(struct indexer *ix)
{
	struct pub_batch *b = &ix->batch;
	int ret, r;

	if (!b->n)
		return;
	ret = catalog_publish_local_batch(ix->cat, b->pubs, b->n);
	for (size_t i = 0; i < b->n; i++) {
		struct cat_publish *p = &b->pubs[i];
		struct pub_item *it = &b->items[i];

		r = ret < 0 ? catalog_publish_local_batch(ix->cat, p, 1) : 0;
		if (r < 0) {
			log_msg(LOG_WARNING, "indexer: publishing %s/%s: %s", p->e.category,
				it->path, strerror(-r));
		} else {
			p->e.seq = p->seq;
			stats_published(ix, &it->old, it->had_old, p->e.size, true);
			pset_del_key(&ix->pending, it->cat, it->path);
			log_msg(LOG_DEBUG, "indexer: %s/%s published (seq %lld, %llu bytes)",
				p->e.category, it->path, (long long)p->seq,
				(unsigned long long)p->e.size);
			if (ix->ops.published)
				ix->ops.published(ix->arg, it->cat, &p->e);
		}
		free(it->path);
		free(it->chunks);
		free(it->blocks);
	}
	b->n = 0;
}

/*
 * Decides about one regular file: unchanged (count it), held by a sidecar, not quiet yet
 * (pend it), or hash and publish it. @force skips the quiet period.
 */
void indexer_check_file(struct indexer *ix, size_t ci, const char *rel, const char *full,
			const struct stat *st, bool sidecar, bool force, const struct pent *prev)
{
	struct entry_copy old;
	bool had_old;
	int64_t due = 0;
	int ret;

	if (sidecar) {
		/* Held until the sidecar goes; its removal is an event of its own. */
		pset_del_key(&ix->pending, ci, rel);
		goto out;
	}
	/* Hashed moments ago in this batch: what it decided must be in the catalog first. */
	if (batch_has(ix, ci, rel))
		indexer_flush_publishes(ix);
	ret = get_entry(ix, ci, rel, &old);
	if (ret < 0 && ret != -ENOENT) {
		log_msg(LOG_WARNING, "indexer: looking up %s/%s: %s", indexer_cat_name(ix, ci), rel,
			strerror(-ret));
		goto out;
	}
	had_old = ret == 0;
	if (had_old && !old.deleted && identity_matches(&old, st)) {
		pset_del_key(&ix->pending, ci, rel);
		goto out;
	}
	if (!prev)
		prev = pset_find(&ix->pending, -1, ci, rel);
	if (!force && !is_quiet(ix, st, prev, &due))
		pend_file(ix, ci, rel, st, due, prev);
	else
		hash_and_publish(ix, ci, rel, full, st, &old, had_old);
out:
	return;
}

/* --- the thread --------------------------------------------------------------------------- */

static void wait_for_work(struct indexer *ix)
{
	struct pollfd pfd[2] = { { .fd = ix->wake_fd, .events = POLLIN },
				 { .fd = ix->ino_fd, .events = POLLIN } };
	int64_t now = mono_ns(), deadline = ix->next_rescan, wait_ms;
	int timeout;
	uint64_t count;

	if (ix->next_due < deadline)
		deadline = ix->next_due;
	if (ix->scan_wanted || deadline <= now) {
		timeout = 0;
	} else {
		wait_ms = (deadline - now + NS_PER_MS - 1) / NS_PER_MS;
		timeout = wait_ms > MAX_SLEEP_MS ? MAX_SLEEP_MS : (int)wait_ms;
	}
	if (poll(pfd, ix->ino_fd >= 0 ? 2 : 1, timeout) < 0) {
		if (errno != EINTR)
			log_msg(LOG_WARNING, "indexer: poll: %s", strerror(errno));
		return;
	}
	if ((pfd[0].revents & POLLIN) && read(ix->wake_fd, &count, sizeof(count)) < 0 &&
	    errno != EAGAIN)
		log_msg(LOG_DEBUG, "indexer: eventfd: %s", strerror(errno));
	if (ix->ino_fd >= 0 && (pfd[1].revents & POLLIN))
		read_events(ix);
}

static void *indexer_main(void *arg)
{
	struct indexer *ix = arg;

	pthread_setname_np(pthread_self(), "meshfs-index");
	while (!ix->stopping) {
		drain_jobs(ix);
		if (ix->stopping)
			break;
		if (ix->scan_wanted || mono_ns() >= ix->next_rescan)
			indexer_full_scan(ix);
		if (ix->stopping)
			break;
		run_due(ix);
		if (ix->stopping)
			break;
		/* Nothing hashed may wait for the next wakeup. */
		indexer_flush_publishes(ix);
		wait_for_work(ix);
	}
	indexer_flush_publishes(ix);
	return NULL;
}

/* --- public API --------------------------------------------------------------------------- */

static void indexer_free(struct indexer *ix)
{
	struct job *j;

	if (!ix)
		return;
	while ((j = ix->head)) {
		ix->head = j->next;
		free_job(j);
	}
	/* Empty once the thread has run (it commits the batch as it leaves). */
	for (size_t i = 0; i < ix->batch.n; i++) {
		free(ix->batch.items[i].path);
		free(ix->batch.items[i].chunks);
		free(ix->batch.items[i].blocks);
	}
	pset_destroy(&ix->pending);
	pset_destroy(&ix->dirs);
	pset_destroy(&ix->watches);
	pset_destroy(&ix->warned);
	for (size_t i = 0; i < CFG_MAX_CATEGORIES; i++)
		free(ix->catdir[i]);
	if (ix->ino_fd >= 0)
		close(ix->ino_fd);
	if (ix->wake_fd >= 0)
		close(ix->wake_fd);
	pthread_cond_destroy(&ix->scan_cond);
	pthread_mutex_destroy(&ix->lock);
	free(ix);
}

int indexer_start(const struct mfs_config *cfg, struct catalog *cat,
		  const struct indexer_ops *ops, void *arg, int rescan_seconds,
		  struct indexer **out)
{
	struct indexer *ix = NULL;
	pthread_condattr_t ca;
	int ret = 0;

	if (!cfg || !cfg->self || !cfg->node || !cat || !out ||
	    cfg->n_categories > CFG_MAX_CATEGORIES) {
		ret = -EINVAL;
		goto out;
	}
	ix = calloc(1, sizeof(*ix));
	if (!ix) {
		ret = -ENOMEM;
		goto out;
	}
	ix->wake_fd = -1;
	ix->ino_fd = -1;
	pthread_mutex_init(&ix->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ix->scan_cond, &ca);
	pthread_condattr_destroy(&ca);
	ix->cfg = cfg;
	ix->cat = cat;
	if (ops)
		ix->ops = *ops;
	ix->arg = arg;
	ix->quiet_ns = cfg->publish_quiet_seconds > 0
			       ? (int64_t)(cfg->publish_quiet_seconds * NS_PER_SEC) : 0;
	ix->rescan_ns = (int64_t)(rescan_seconds > 0 ? rescan_seconds : DEFAULT_RESCAN_SECONDS) *
			NS_PER_SEC;
	ix->n_cats = cfg->n_categories;
	ix->watches.by_wd = true;
	ix->next_due = INT64_MAX;
	ix->next_rescan = 0;		/* due at once: the first scan */
	for (size_t i = 0; i < ix->n_cats; i++)
		ix->catdir[i] = config_category_dir(cfg, cfg->self, i);
	/* What was published before this start, so the counters make sense during the scan. */
	catalog_totals(cat, cfg->node, &ix->stats.files, &ix->stats.bytes);

	ix->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ix->wake_fd < 0) {
		ret = -errno;
		goto out;
	}
	ix->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ix->ino_fd < 0)
		log_msg(LOG_WARNING, "indexer: inotify unavailable (%s); changes are seen by the "
			"periodic rescan only", strerror(errno));

	queue_job(ix, JOB_SCAN, 0, NULL);
	ret = -pthread_create(&ix->thread, NULL, indexer_main, ix);
	if (ret < 0)
		goto out;
	ix->thread_started = true;
	*out = ix;
	ix = NULL;
out:
	indexer_free(ix);
	return ret;
}

void indexer_stop(struct indexer *ix)
{
	if (!ix)
		return;
	if (ix->thread_started) {
		ix->stop_job.kind = JOB_STOP;
		ix->stop_job.embedded = true;
		push_job(ix, &ix->stop_job);
		pthread_join(ix->thread, NULL);
	}
	indexer_free(ix);
}

int indexer_wait_scan(struct indexer *ix, int timeout_ms)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * NS_PER_MS;
	if (ts.tv_nsec >= NS_PER_SEC) {
		ts.tv_sec++;
		ts.tv_nsec -= NS_PER_SEC;
	}
	pthread_mutex_lock(&ix->lock);
	while (!ix->first_scan_done && ret == 0)
		ret = pthread_cond_timedwait(&ix->scan_cond, &ix->lock, &ts);
	if (ix->first_scan_done)
		ret = 0;
	pthread_mutex_unlock(&ix->lock);
	return -ret;
}

/* Path arguments from the mount side: clean, or "" for a whole category. */
static bool valid_request(const struct indexer *ix, size_t ci, const char *path)
{
	return ix && ci < ix->n_cats && path && (!path[0] || path_is_clean_relative(path));
}

void indexer_publish_now(struct indexer *ix, size_t cat_idx, const char *path)
{
	char *copy;

	if (!valid_request(ix, cat_idx, path))
		return;
	copy = strdup(path);
	/* Out of memory: a rescan will find it. */
	queue_job(ix, copy ? JOB_CHECK : JOB_SCAN, cat_idx, copy);
}

void indexer_rescan(struct indexer *ix)
{
	if (ix)
		queue_job(ix, JOB_SCAN, 0, NULL);
}

/*
 * Moves the live entry @old_rel to @new_rel: same content, hash and chunks; identity from
 * lstat of the new path; a new seq. The new version is published before the old one is
 * deleted, so a crash in between leaves a duplicate the next scan removes, never a loss.
 */
static int move_entry(struct indexer *ix, size_t ci, const char *old_rel, const char *new_rel)
{
	struct entry_copy old, target;
	struct hash128 *chunks = NULL, *blocks = NULL;
	struct cat_publish pub = { 0 };
	size_t n_chunks = 0;
	struct cat_entry e;
	struct stat st;
	char *full = NULL;
	int64_t seq = 0;
	bool had_target;
	int ret;

	ret = get_entry(ix, ci, old_rel, &old);
	if (ret == 0 && old.deleted)
		ret = -ENOENT;
	if (ret < 0)
		goto out;
	ret = catalog_get_chunks(ix->cat, ix->cfg->node, indexer_cat_name(ix, ci), old_rel, &chunks,
				 &n_chunks);
	if (ret < 0)
		goto out;
	full = path_join(ix->catdir[ci], new_rel);
	if (!full) {
		ret = -ENOMEM;
		goto out;
	}
	if (lstat(full, &st) < 0)
		ret = -errno;
	else if (!S_ISREG(st.st_mode))
		ret = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	if (ret < 0) {
		/* Not there as a file after all: the old entry is wrong either way. */
		delete_entry(ix, ci, old_rel, false);
		goto out;
	}
	had_target = get_entry(ix, ci, new_rel, &target) == 0 && !target.deleted;
	memset(&e, 0, sizeof(e));
	e.host = ix->cfg->node;
	e.category = indexer_cat_name(ix, ci);
	e.path = new_rel;
	e.size = old.size;
	e.mtime_ns = old.mtime_ns;
	e.hash = old.hash;
	e.origin = ix->cfg->node;
	/* Size and mtime stay those that were hashed: if the file changed too, the next look
	 * sees the difference and rehashes. */
	e.dev = st.st_dev;
	e.ino = st.st_ino;
	e.ctime_ns = ts_ns(&st.st_ctim);
	e.confirmed_at = now_s();
	/* Block hashes move with it when the catalog has them (see catalog_get_blocks). */
	pub.n_blocks = (size_t)((old.size + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE);
	blocks = pub.n_blocks ? calloc(pub.n_blocks, sizeof(*blocks)) : NULL;
	if (blocks && catalog_get_blocks(ix->cat, ix->cfg->node, e.category, old_rel, &old.hash,
					 0, pub.n_blocks, blocks) == 0)
		pub.blocks = blocks;
	pub.e = e;
	pub.chunks = chunks;
	pub.n_chunks = n_chunks;
	ret = catalog_publish_local_batch(ix->cat, &pub, 1);
	if (ret < 0)
		goto out;
	ret = catalog_delete_local(ix->cat, ix->cfg->node, e.category, old_rel, &seq);
	if (ret == -ENOENT)
		ret = 0;	/* the indexer thread got there first */
	if (had_target)
		stats_deleted(ix, target.size);
out:
	if (ret < 0 && ret != -ENOENT)
		log_msg(LOG_WARNING, "indexer: moving %s/%s to %s in the catalog: %s",
			indexer_cat_name(ix, ci), old_rel, new_rel, strerror(-ret));
	free(blocks);
	free(chunks);
	free(full);
	return ret;
}

int indexer_renamed(struct indexer *ix, size_t cat_idx, const char *old_path,
		    const char *new_path, bool is_dir)
{
	struct path_list l = { 0 };
	size_t old_len;
	int ret = 0;

	if (!valid_request(ix, cat_idx, old_path) || !valid_request(ix, cat_idx, new_path) ||
	    !old_path[0] || !new_path[0]) {
		ret = -EINVAL;
		goto out;
	}
	if (!ix->catdir[cat_idx]) {
		ret = -ENOENT;
		goto out;
	}
	if (strcmp(old_path, new_path) == 0)
		goto out;
	if (!is_dir) {
		ret = move_entry(ix, cat_idx, old_path, new_path);
		/* Renamed before it was ever published (write to a temp name, then rename). */
		if (ret == -ENOENT) {
			indexer_publish_now(ix, cat_idx, new_path);
			ret = 0;
		}
		goto out;
	}
	/* Collected first: the catalog cannot be changed from inside its own walk. */
	ret = indexer_collect_entries(ix, cat_idx, old_path, &l);
	if (ret < 0)
		goto out;
	old_len = strlen(old_path);
	for (size_t i = 0; i < l.n; i++) {
		char *np = NULL;
		int r;

		if (asprintf(&np, "%s%s", new_path, l.items[i].path + old_len) < 0) {
			ret = -ENOMEM;
			break;
		}
		r = move_entry(ix, cat_idx, l.items[i].path, np);
		if (r < 0 && r != -ENOENT && ret == 0)
			ret = r;
		free(np);
	}
out:
	indexer_path_list_free(&l);
	return ret;
}

int indexer_removed(struct indexer *ix, size_t cat_idx, const char *path)
{
	int ret = -EINVAL;

	if (!valid_request(ix, cat_idx, path) || !path[0])
		goto out;
	ret = delete_entry(ix, cat_idx, path, false);
	/* Never published (or the thread saw the unlink first): nothing left to record. */
	if (ret == -ENOENT)
		ret = 0;
out:
	return ret;
}

void indexer_get_stats(struct indexer *ix, struct indexer_stats *st)
{
	pthread_mutex_lock(&ix->lock);
	*st = ix->stats;
	pthread_mutex_unlock(&ix->lock);
}
