/*
 * shared — the probe of this node's shared storage (shared.h says what is checked, what
 * "healthy" means and what follows from it).
 *
 * One struct shared per running daemon (struct daemon holds it), with one struct shared_cat per category of this node that lies under a shared_storage path. A round
 * (at start, then every interval on the "meshfs-shared" thread) starts a probe job for each
 * category — unless the previous one is still stuck in the kernel —, waits for the jobs until
 * the deadline, decides each category's state from its job's result and from what has been
 * seen of the other hosts' probes, and gives the namespace the mode that follows.
 *
 * A job is shared by the checker and the detached worker thread that does its I/O, and is
 * freed by whichever lets go last: a worker stuck on a hung mount may outlive the daemon.
 */
#include "sync/shared.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/peers.h"
#include "sync/router.h"
#include "sync/util.h"

#define NS_PER_MS ((int64_t)1000000)
#define NS_PER_S ((int64_t)1000000000)
#define PROBE_MAX 512		/* a probe file is read up to this many bytes */
#define FRESH_INTERVALS 3	/* a host's probe is fresh when it changed within this many */
#define WAIT_SLICE_MS 100	/* a wait for a job looks for a stop this often */

/* What a worker saw of another host's probe file. */
struct peer_seen {
	bool present;
	uint64_t nonce;
	int64_t time;		/* the unix time written in it */
};

/* One probe of one category dir: inputs fixed at creation, outputs written by the worker
 * before it sets done, read by the checker only after it saw done. */
struct probe_job {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs;		/* protected by lock */
	bool done;		/* protected by lock */
	int64_t started;	/* mono ns */
	char *dir;
	char *node;
	char content[PROBE_MAX];
	size_t content_len;
	char **peer_names;
	size_t n_peers;
	/* outputs */
	int err;		/* 0: written, fsync'd, renamed and read back identical */
	bool readable;		/* the category dir could be listed */
	int64_t took_ns;
	char detail[384];	/* what failed, when err */
	struct peer_seen *seen;	/* n_peers entries */
};

/* What this node knows of one host that shares a category's storage per the config. Written
 * by the checker under sh->lock. */
struct peer_track {
	size_t host;		/* index in cfg->hosts */
	uint64_t nonce;		/* the last nonce seen; 0 = none yet */
	int64_t changed_at;	/* mono ns when a new nonce was last seen fresh; 0 = never */
	int64_t up_since;	/* mono ns since when the host is up; 0 = not up */
	bool fresh;		/* its probe changed within the fresh window */
	bool contradicted;	/* up long enough, and its probe is not fresh here */
};

struct shared_cat {
	size_t cat;
	char *dir;
	struct probe_job *job;		/* the checker's own (not under the lock) */
	bool *up;			/* the checker's scratch: n_peers entries */
	/* protected by sh->lock */
	struct peer_track *peers;
	size_t n_peers;
	bool decided;
	bool healthy;
	bool readable;
	int64_t decided_at;		/* mono ns */
	char detail[512];
	enum ns_cat_mode mode;		/* the mode last given to the namespace */
};

struct shared {
	const struct mfs_config *cfg;
	struct ns *ns;
	struct peers *peers;
	struct shared_opts opts;
	int64_t interval_ns;
	int64_t deadline_ns;
	int64_t started;		/* mono ns */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;		/* before a job's lock */
	pthread_cond_t cond;
	bool stopping;			/* written under lock, read atomically */
	struct shared_cat *cats;
	size_t n_cats;
};


/* ------------------------------------------------------------------ helpers */

static void appendf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Appends to the string in @buf, cutting what does not fit. */
static void appendf(char *buf, size_t size, const char *fmt, ...)
{
	size_t len = strlen(buf);
	va_list ap;

	if (len + 1 >= size)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + len, size - len, fmt, ap);
	va_end(ap);
}

/* A random non-zero nonce; @salt (any address) only matters if getrandom fails. */
static uint64_t new_nonce(const void *salt)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)salt;
	return v ? v : 1;
}

static bool stopping(struct shared *sh)
{
	return __atomic_load_n(&sh->stopping, __ATOMIC_ACQUIRE);
}

/* CLOCK_MONOTONIC @ns from now, for pthread_cond_timedwait on a monotonic condvar. */
static struct timespec mono_deadline(int64_t ns)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ns / NS_PER_S;
	ts.tv_nsec += ns % NS_PER_S;
	if (ts.tv_nsec >= NS_PER_S) {
		ts.tv_sec++;
		ts.tv_nsec -= NS_PER_S;
	}
	return ts;
}

static int cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	int ret;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	ret = -pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
	return ret;
}

/* ------------------------------------------------------------------ jobs */

static void job_unref(struct probe_job *j)
{
	bool last;

	if (!j)
		return;
	pthread_mutex_lock(&j->lock);
	last = --j->refs == 0;
	pthread_mutex_unlock(&j->lock);
	if (!last)
		return;
	for (size_t i = 0; i < j->n_peers; i++)
		free(j->peer_names[i]);
	free(j->peer_names);
	free(j->seen);
	free(j->dir);
	free(j->node);
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

static bool job_done(struct probe_job *j)
{
	bool done;

	pthread_mutex_lock(&j->lock);
	done = j->done;
	pthread_mutex_unlock(&j->lock);
	return done;
}

static void job_fail(struct probe_job *j, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Records failure @err (-errno) of the probe with a sentence for health's detail. */
static void job_fail(struct probe_job *j, int err, const char *fmt, ...)
{
	va_list ap;

	j->err = err;
	va_start(ap, fmt);
	vsnprintf(j->detail, sizeof(j->detail), fmt, ap);
	va_end(ap);
}

/* Reads up to PROBE_MAX bytes of the regular file @path into @buf (NUL-terminated). Returns
 * the length or -errno. */
static ssize_t read_probe_file(const char *path, char *buf)
{
	struct stat st;
	size_t len = 0;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		goto out;
	}
	n = read_upto(fd, buf, PROBE_MAX);
	if (n < 0)
		ret = (int)n;
	else
		len = (size_t)n;
out:
	close(fd);
	buf[len] = '\0';
	return ret < 0 ? ret : (ssize_t)len;
}

/* Parses a probe file of host @node: its nonce and time. False when it is not one. */
static bool parse_probe(char *text, const char *node, uint64_t *nonce, int64_t *time)
{
	char *save = NULL, *line;
	bool magic = false, named = false, has_nonce = false, has_time = false;

	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strcmp(line, "meshfs-probe 1") == 0)
			magic = true;
		else if (strncmp(line, "node ", 5) == 0)
			named = strcmp(line + 5, node) == 0;
		else if (sscanf(line, "nonce %" SCNx64, nonce) == 1)
			has_nonce = true;
		else if (sscanf(line, "time %" SCNd64, time) == 1)
			has_time = true;
	}
	/* A time outside 1970..5138 is not one we wrote (and keeps the arithmetic sane). */
	return magic && named && has_nonce && has_time && *nonce != 0 && *time >= 0 &&
	       *time < 100000000000LL;
}

/*
 * The probe itself (see shared.h). Returns 0 or -errno with the reason in j->detail. Any of
 * these calls may block for as long as the storage does not answer: that is why it runs on a
 * thread of its own.
 */
static int probe_io(struct probe_job *j)
{
	char dir[PATH_MAX], side[PATH_MAX], tmp[PATH_MAX], file[PATH_MAX], back[PROBE_MAX + 1];
	struct stat st;
	ssize_t n;
	DIR *d;
	int fd = -1, ret = 0;

	if (stat(j->dir, &st) < 0) {
		ret = -errno;
		if (errno == ENOENT)
			job_fail(j, ret, "%s is missing (not mounted?)", j->dir);
		else
			job_fail(j, ret, "cannot reach %s: %s", j->dir, strerror(errno));
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		job_fail(j, -ENOTDIR, "%s is not a directory", j->dir);
		goto out;
	}
	d = opendir(j->dir);
	if (!d) {
		ret = -errno;
		job_fail(j, ret, "cannot list %s: %s", j->dir, strerror(errno));
		goto out;
	}
	errno = 0;
	if (!readdir(d) && errno) {
		ret = -errno;
		job_fail(j, ret, "cannot list %s: %s", j->dir, strerror(errno));
		closedir(d);
		goto out;
	}
	closedir(d);
	j->readable = true;

	if ((size_t)snprintf(dir, sizeof(dir), "%s/" SHARED_PROBE_DIR, j->dir) >= sizeof(dir) ||
	    (size_t)snprintf(file, sizeof(file), "%s/%s", dir, j->node) >= sizeof(file) ||
	    (size_t)snprintf(side, sizeof(side), "%s.writing", file) >= sizeof(side) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s.new.writing", file) >= sizeof(tmp)) {
		job_fail(j, -ENAMETOOLONG, "%s: path too long for the probe", j->dir);
		goto out;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		ret = -errno;
		job_fail(j, ret, "cannot write the probe in %s: %s", j->dir, strerror(errno));
		goto out;
	}
	/* The sidecar keeps the indexer from publishing the probe (a .writing file holds the
	 * file it names); it is made first and left in place. */
	fd = open(side, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
	if (fd < 0) {
		ret = -errno;
		job_fail(j, ret, "cannot write the probe %s: %s", side, strerror(errno));
		goto out;
	}
	close(fd);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		ret = -errno;
		job_fail(j, ret, "cannot write the probe %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		job_fail(j, -EINVAL, "%s is not a regular file", tmp);
		goto out;
	}
	ret = write_all(fd, j->content, j->content_len);
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno; /* NFS reports a failed write-back at close */
	fd = -1;
	if (ret == 0 && rename(tmp, file) < 0)
		ret = -errno;
	if (ret < 0) {
		job_fail(j, ret, "cannot write the probe %s: %s", file, strerror(-ret));
		goto out;
	}
	n = read_probe_file(file, back);
	if (n < 0) {
		job_fail(j, (int)n, "cannot read the probe %s back: %s", file, strerror((int)-n));
		goto out;
	}
	if ((size_t)n != j->content_len || memcmp(back, j->content, j->content_len) != 0)
		job_fail(j, -EIO, "the probe %s read back differs from what was written", file);
out:
	if (fd >= 0)
		close(fd);
	return j->err;
}

/* The probe files of the hosts that share the storage, as this node sees them. */
static void read_peers(struct probe_job *j)
{
	char path[PATH_MAX], buf[PROBE_MAX + 1];

	for (size_t i = 0; i < j->n_peers; i++) {
		struct peer_seen *s = &j->seen[i];

		if ((size_t)snprintf(path, sizeof(path), "%s/" SHARED_PROBE_DIR "/%s", j->dir,
				     j->peer_names[i]) >= sizeof(path) ||
		    read_probe_file(path, buf) < 0)
			continue;
		s->present = parse_probe(buf, j->peer_names[i], &s->nonce, &s->time);
	}
}

static void *probe_main(void *arg)
{
	struct probe_job *j = arg;
	int64_t t0 = mono_ns();

	pthread_setname_np(pthread_self(), "meshfs-probe");
	if (probe_io(j) == 0)
		read_peers(j);
	j->took_ns = mono_ns() - t0;
	pthread_mutex_lock(&j->lock);
	j->done = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	job_unref(j);
	return NULL;
}

/* A new job for @c with its worker running; one reference is the caller's. A job whose
 * worker could not start is returned done, with the reason. NULL only on ENOMEM. */
static struct probe_job *job_start(struct shared *sh, struct shared_cat *c)
{
	struct probe_job *j = calloc(1, sizeof(*j));
	pthread_attr_t attr;
	pthread_t t;
	int ret;

	if (!j)
		return NULL;
	pthread_mutex_init(&j->lock, NULL);
	if (cond_init_mono(&j->cond) < 0) {
		pthread_mutex_destroy(&j->lock);
		free(j);
		return NULL;
	}
	j->refs = 1;
	j->started = mono_ns();
	j->dir = strdup(c->dir);
	j->node = strdup(sh->cfg->node);
	j->peer_names = calloc(c->n_peers ? c->n_peers : 1, sizeof(*j->peer_names));
	j->seen = calloc(c->n_peers ? c->n_peers : 1, sizeof(*j->seen));
	if (!j->dir || !j->node || !j->peer_names || !j->seen)
		goto fail;
	j->n_peers = c->n_peers;
	for (size_t i = 0; i < c->n_peers; i++) {
		j->peer_names[i] = strdup(sh->cfg->hosts[c->peers[i].host].name);
		if (!j->peer_names[i])
			goto fail;
	}
	j->content_len = (size_t)snprintf(j->content, sizeof(j->content),
					  "meshfs-probe 1\nnode %s\nnonce %016" PRIx64
					  "\ntime %" PRId64 "\n",
					  j->node, new_nonce(j), now_s());
	if (j->content_len >= sizeof(j->content))
		goto fail;

	j->refs = 2; /* the worker's and the caller's */
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ret = pthread_create(&t, &attr, probe_main, j);
	pthread_attr_destroy(&attr);
	if (ret != 0) {
		j->refs = 1;
		j->done = true;
		job_fail(j, -ret, "cannot start a probe thread: %s", strerror(ret));
	}
	return j;
fail:
	j->refs = 1;
	job_unref(j);
	return NULL;
}

/* Waits until @j is done or the monotonic time @until, looking for a stop now and then. */
static void job_wait(struct shared *sh, struct probe_job *j, int64_t until)
{
	pthread_mutex_lock(&j->lock);
	while (!j->done && !stopping(sh)) {
		int64_t left = until - mono_ns();
		struct timespec ts;

		if (left <= 0)
			break;
		ts = mono_deadline(left < WAIT_SLICE_MS * NS_PER_MS ? left
								     : WAIT_SLICE_MS * NS_PER_MS);
		pthread_cond_timedwait(&j->cond, &j->lock, &ts);
	}
	pthread_mutex_unlock(&j->lock);
}

/* ------------------------------------------------------------------ decisions */

static bool peer_is_up(struct shared *sh, size_t host)
{
	struct peer_status ps;

	if (sh->opts.peer_up)
		return sh->opts.peer_up(sh->opts.peer_up_arg, host);
	if (!sh->peers)
		return false;
	peers_status(sh->peers, host, &ps);
	return ps.last_seen > 0 && ps.circuit == CIRCUIT_CLOSED &&
	       (ps.state == PEER_UP || ps.state == PEER_DEGRADED);
}

static const char *host_name(const struct shared *sh, const struct peer_track *p)
{
	return sh->cfg->hosts[p->host].name;
}

/* Appends the names of @c's peers for which @pick is true, as "a, b". Returns how many. */
static size_t list_peers(const struct shared *sh, const struct shared_cat *c, char *buf,
			 size_t size, bool fresh, bool contradicted)
{
	size_t n = 0;

	for (size_t i = 0; i < c->n_peers; i++) {
		const struct peer_track *p = &c->peers[i];

		if ((fresh && !p->fresh) || (contradicted && !p->contradicted))
			continue;
		appendf(buf, size, "%s%s", n ? ", " : "", host_name(sh, p));
		n++;
	}
	return n;
}

/* Notes the other hosts' probes in @j (may be NULL: no news this round) and who is up. */
static void track_peers(struct shared *sh, struct shared_cat *c, const struct probe_job *j,
			int64_t now)
{
	int64_t window = FRESH_INTERVALS * sh->interval_ns + sh->deadline_ns;
	int64_t wall = now_s();

	for (size_t i = 0; i < c->n_peers; i++) {
		struct peer_track *p = &c->peers[i];
		const struct peer_seen *s = j ? &j->seen[i] : NULL;
		int64_t watched;

		if (s && s->present && s->nonce != p->nonce) {
			/* A nonce seen change is fresh whatever the clocks say; the first one
			 * seen only if the time written in it is recent. */
			if (p->nonce != 0 || llabs(wall - s->time) <= window / NS_PER_S)
				p->changed_at = now;
			p->nonce = s->nonce;
		}
		p->fresh = p->changed_at && now - p->changed_at <= window;
		p->up_since = c->up[i] ? (p->up_since ? p->up_since : now) : 0;
		watched = p->up_since > sh->started ? p->up_since : sh->started;
		p->contradicted = c->up[i] && now - watched >= window && !p->fresh;
	}
}

/* Decides @c's state from its job (not done: no answer yet). sh->lock held. Returns the
 * namespace mode that follows. */
static enum ns_cat_mode decide(struct shared *sh, struct shared_cat *c,
			       const struct probe_job *j, bool done, int64_t now)
{
	int64_t window_s = (FRESH_INTERVALS * sh->interval_ns + sh->deadline_ns) / NS_PER_S;
	size_t n_fresh = 0, n_contra = 0;
	char *det = c->detail;
	size_t size = sizeof(c->detail);

	track_peers(sh, c, done ? j : NULL, now);
	for (size_t i = 0; i < c->n_peers; i++) {
		n_fresh += c->peers[i].fresh;
		n_contra += c->peers[i].contradicted;
	}
	det[0] = '\0';
	c->decided = true;
	c->decided_at = now;
	if (!j || !done) {
		int64_t waited = j ? (now - j->started) / NS_PER_S : 0;

		c->healthy = false;
		c->readable = false;
		if (!j)
			appendf(det, size, "cannot start a probe: out of memory");
		else
			appendf(det, size, "no answer from %s for %" PRId64 " s (hung storage?)",
				c->dir, waited);
	} else if (j->err < 0) {
		c->healthy = false;
		c->readable = j->readable;
		appendf(det, size, "%s", j->detail);
	} else if (n_contra > 0 && n_fresh == 0) {
		c->healthy = false;
		c->readable = true;
		appendf(det, size, "probe written and read back, but ");
		list_peers(sh, c, det, size, false, true);
		appendf(det, size, " (up) wrote no probe here in the last %" PRId64 " s: this "
			"is not the storage they see (an empty local mountpoint?), or theirs is "
			"broken", window_s);
	} else {
		c->healthy = true;
		c->readable = true;
		appendf(det, size, "probe written and read back in %" PRId64 " ms",
			j->took_ns / NS_PER_MS);
		if (n_fresh) {
			appendf(det, size, "; shared with ");
			list_peers(sh, c, det, size, true, false);
		} else if (c->n_peers) {
			appendf(det, size, "; no other host's probe seen here yet");
		}
		if (n_contra) {
			appendf(det, size, "; not shared with ");
			list_peers(sh, c, det, size, false, true);
			appendf(det, size, " (up, but no probe of theirs here)");
		}
	}
	if (c->healthy)
		return NS_CAT_PASSTHROUGH;
	return c->readable ? NS_CAT_LOCAL : NS_CAT_UNREADABLE;
}

static const char *mode_words(enum ns_cat_mode m)
{
	switch (m) {
	case NS_CAT_PASSTHROUGH:
		return "passed straight through";
	case NS_CAT_LOCAL:
		return "synced as a normal category";
	default:
		return "synced as a normal category, this node's copies not used";
	}
}

/* Decides every category after a round's wait, and gives the namespace the modes. */
static void decide_all(struct shared *sh, bool first)
{
	for (size_t i = 0; i < sh->n_cats; i++) {
		struct shared_cat *c = &sh->cats[i];
		struct probe_job *j = c->job;
		bool done = j && job_done(j), was_healthy, changed;
		enum ns_cat_mode mode;
		char detail[sizeof(c->detail)];

		for (size_t k = 0; k < c->n_peers; k++)
			c->up[k] = peer_is_up(sh, c->peers[k].host);
		pthread_mutex_lock(&sh->lock);
		was_healthy = c->healthy;
		mode = decide(sh, c, j, done, mono_ns());
		changed = first || mode != c->mode || was_healthy != c->healthy;
		c->mode = mode;
		memcpy(detail, c->detail, sizeof(detail));
		pthread_mutex_unlock(&sh->lock);
		if (done) {
			job_unref(j);
			c->job = NULL;
		}
		if (!changed)
			continue;
		if (sh->ns)
			ns_set_category_mode(sh->ns, c->cat, mode);
		log_msg(mode == NS_CAT_PASSTHROUGH ? LOG_INFO : LOG_WARNING,
			"shared storage: %s at %s is %s: %s; %s",
			sh->cfg->categories[c->cat].name, c->dir,
			mode == NS_CAT_PASSTHROUGH ? "healthy" : "unhealthy", detail,
			mode_words(mode));
	}
}

/* One round: a probe per category (not for one still stuck), the wait, the decisions. */
static void round_run(struct shared *sh, bool first)
{
	for (size_t i = 0; i < sh->n_cats; i++) {
		struct shared_cat *c = &sh->cats[i];

		if (c->job) {
			if (!job_done(c->job))
				continue; /* still stuck: one probe at a time per category */
			/* It answered after its deadline: that answer is old, ask again. */
			job_unref(c->job);
		}
		c->job = job_start(sh, c);
	}
	for (size_t i = 0; i < sh->n_cats && !stopping(sh); i++) {
		struct probe_job *j = sh->cats[i].job;

		if (j)
			job_wait(sh, j, j->started + sh->deadline_ns);
	}
	if (!stopping(sh))
		decide_all(sh, first);
}

static void *shared_main(void *arg)
{
	struct shared *sh = arg;
	int64_t next = mono_ns() + sh->interval_ns;

	pthread_setname_np(pthread_self(), "meshfs-shared");
	pthread_mutex_lock(&sh->lock);
	while (!sh->stopping) {
		int64_t now = mono_ns();

		if (now < next) {
			struct timespec ts = mono_deadline(next - now);

			pthread_cond_timedwait(&sh->cond, &sh->lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&sh->lock);
		round_run(sh, false);
		next = now + sh->interval_ns;
		pthread_mutex_lock(&sh->lock);
	}
	pthread_mutex_unlock(&sh->lock);
	return NULL;
}

/* ------------------------------------------------------------------ setup */

static void shared_free(struct shared *sh)
{
	if (!sh)
		return;
	for (size_t i = 0; i < sh->n_cats; i++) {
		job_unref(sh->cats[i].job);
		free(sh->cats[i].dir);
		free(sh->cats[i].peers);
		free(sh->cats[i].up);
	}
	free(sh->cats);
	pthread_cond_destroy(&sh->cond);
	pthread_mutex_destroy(&sh->lock);
	free(sh);
}

/* Fills @c for category @cat at @dir (taken over): the hosts that share it per the config
 * (either way round, so both ends of a pair look for each other). 0 or -ENOMEM. */
static int cat_init(struct shared *sh, struct shared_cat *c, size_t cat, char *dir)
{
	const struct mfs_config *cfg = sh->cfg;

	c->cat = cat;
	c->dir = dir;
	c->mode = NS_CAT_PASSTHROUGH; /* what ns_create() starts it as */
	c->peers = calloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*c->peers));
	c->up = calloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*c->up));
	if (!c->peers || !c->up)
		return -ENOMEM;
	for (size_t h = 0; h < cfg->n_hosts; h++) {
		const struct cfg_host *o = &cfg->hosts[h];

		if (o == cfg->self || !o->active)
			continue;
		if (router_config_shares(cfg, cfg->self, o, cat) ||
		    router_config_shares(cfg, o, cfg->self, cat))
			c->peers[c->n_peers++].host = h;
	}
	return 0;
}

int shared_start(const struct mfs_config *cfg, struct ns *ns, struct peers *peers,
		 const struct shared_opts *opts, struct shared **out)
{
	struct shared *sh = NULL;
	int ret = 0;

	*out = NULL;
	sh = calloc(1, sizeof(*sh));
	if (!sh)
		return -ENOMEM;
	sh->cfg = cfg;
	sh->ns = ns;
	sh->peers = peers;
	if (opts)
		sh->opts = *opts;
	sh->interval_ns = (sh->opts.interval_ms > 0 ? sh->opts.interval_ms : SHARED_INTERVAL_MS) *
			  NS_PER_MS;
	sh->deadline_ns = (sh->opts.deadline_ms > 0 ? sh->opts.deadline_ms : SHARED_DEADLINE_MS) *
			  NS_PER_MS;
	sh->started = mono_ns();
	pthread_mutex_init(&sh->lock, NULL);
	ret = cond_init_mono(&sh->cond);
	if (ret < 0) {
		pthread_mutex_destroy(&sh->lock);
		free(sh);
		return ret;
	}
	sh->cats = calloc(cfg->n_categories ? cfg->n_categories : 1, sizeof(*sh->cats));
	if (!sh->cats) {
		ret = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < cfg->n_categories; i++) {
		char *dir = config_category_dir(cfg, cfg->self, i);

		if (!dir || !config_is_shared(cfg->self, dir)) {
			free(dir);
			continue;
		}
		ret = cat_init(sh, &sh->cats[sh->n_cats++], i, dir);
		if (ret < 0)
			goto fail;
	}
	if (sh->n_cats == 0) {
		shared_free(sh);
		return 0;
	}
	round_run(sh, true);
	ret = -pthread_create(&sh->thread, NULL, shared_main, sh);
	if (ret < 0)
		goto fail;
	sh->thread_started = true;
	*out = sh;
	return 0;
fail:
	shared_free(sh);
	return ret;
}

void shared_stop(struct shared *sh)
{
	if (!sh)
		return;
	pthread_mutex_lock(&sh->lock);
	__atomic_store_n(&sh->stopping, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&sh->cond);
	pthread_mutex_unlock(&sh->lock);
	if (sh->thread_started)
		pthread_join(sh->thread, NULL);
	shared_free(sh);
}

/* ------------------------------------------------------------------ queries */

int shared_list(struct shared *sh, struct shared_view **out, size_t *n)
{
	struct shared_view *v = NULL;
	int64_t now = mono_ns();

	*out = NULL;
	*n = 0;
	if (!sh)
		return 0;
	v = calloc(sh->n_cats, sizeof(*v));
	if (!v)
		return -ENOMEM;
	pthread_mutex_lock(&sh->lock);
	for (size_t i = 0; i < sh->n_cats; i++) {
		const struct shared_cat *c = &sh->cats[i];

		v[i].cat_idx = c->cat;
		snprintf(v[i].path, sizeof(v[i].path), "%s", c->dir);
		v[i].healthy = c->healthy;
		v[i].readable = c->readable;
		v[i].checked_s = c->decided ? (now - c->decided_at) / NS_PER_S : 0;
		snprintf(v[i].detail, sizeof(v[i].detail), "%s", c->detail);
	}
	pthread_mutex_unlock(&sh->lock);
	*out = v;
	*n = sh->n_cats;
	return 0;
}

bool shared_pair_ok(struct shared *sh, const struct cfg_host *other, size_t cat_idx)
{
	bool ok = true;

	for (size_t i = 0; sh && i < sh->n_cats; i++) {
		const struct shared_cat *c = &sh->cats[i];

		if (c->cat != cat_idx)
			continue;
		pthread_mutex_lock(&sh->lock);
		ok = !c->decided || c->healthy;
		for (size_t k = 0; ok && k < c->n_peers; k++)
			if (&sh->cfg->hosts[c->peers[k].host] == other && c->peers[k].contradicted)
				ok = false;
		pthread_mutex_unlock(&sh->lock);
		break;
	}
	return ok;
}
