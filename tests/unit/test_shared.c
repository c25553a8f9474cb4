/*
 * test_shared — the shared-storage probe (sync/shared.c) on real directories, without a mount:
 * a healthy dir, a missing one, one where the probe cannot be written, one that hangs (a FIFO
 * where the probe is opened stands for a hung NFS), the other hosts' probes (fresh, missing
 * while the host is up), and what follows in the namespace (mode, shown versions, the probe
 * dir hidden and reserved) and in the router.
 */
#include "sync/shared.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/config.h"
#include "sync/log.h"
#include "sync/namespace.h"
#include "sync/namespace_int.h"
#include "sync/router.h"
#include "sync/util.h"
#include "tests/unit/logcapture.h"
#include "tests/unit/testutil.h"

#define INTERVAL_MS 200
#define DEADLINE_MS 1000

static char base[64];
static char nfs[96];		/* the shared storage; training lives in nfs/training */
static char training[128];
static struct shared *g_sh;	/* the checker of the test running */
static bool b_up;		/* what the fake peers module says of host b */

static bool fake_peer_up(void *arg, size_t host_idx)
{
	const struct mfs_config *cfg = arg;

	return b_up && strcmp(cfg->hosts[host_idx].name, "b") == 0;
}

/* A fresh temp tree and a config of node a; a and b share nfs/ (training lives there). */
static struct mfs_config *setup(bool make_training)
{
	char path[PATH_MAX + 32], err[512];
	struct mfs_config *cfg = NULL;
	FILE *f;

	snprintf(base, sizeof(base), "/tmp/meshfs-test-shared-XXXXXX");
	if (!mkdtemp(base))
		return NULL;
	snprintf(nfs, sizeof(nfs), "%s/nfs", base);
	snprintf(training, sizeof(training), "%s/training", nfs);
	mkdir(nfs, 0755);
	if (make_training)
		mkdir(training, 0755);
	snprintf(path, sizeof(path), "%s/cluster.yaml", base);
	f = fopen(path, "w");
	if (!f)
		return NULL;
	fprintf(f,
		"node: a\n"
		"state_dir: %s/state\n"
		"hosts:\n"
		"  a: { address: 127.0.0.2, root: %s/a, shared_storage: [%s],\n"
		"       storage_paths: { training: %s } }\n"
		"  b: { address: 127.0.0.3, root: %s/b, shared_storage: [%s],\n"
		"       storage_paths: { training: %s } }\n"
		"  c: { address: 127.0.0.4, root: %s/c }\n",
		base, base, nfs, training, base, nfs, training, base);
	fclose(f);
	if (config_load(path, &cfg, err, sizeof(err)) < 0)
		fprintf(stderr, "config: %s\n", err);
	b_up = false;
	return cfg;
}

static void teardown(struct mfs_config *cfg)
{
	char cmd[PATH_MAX + 16];

	config_free(cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", base);
}

static int start(struct mfs_config *cfg, struct ns *ns)
{
	struct shared_opts o = {
		.interval_ms = INTERVAL_MS,
		.deadline_ms = DEADLINE_MS,
		.peer_up = fake_peer_up,
		.peer_up_arg = cfg,
	};

	return shared_start(cfg, ns, NULL, &o, &g_sh);
}

/* The one shared category's view (training); false if there is not exactly one. */
static bool view(const struct mfs_config *cfg, struct shared_view *out)
{
	struct shared_view *v = NULL;
	size_t n = 0;
	bool ok = shared_list(g_sh, &v, &n) == 0 && n == 1;

	if (ok)
		*out = v[0];
	free(v);
	return ok;
}

/* Polls until training's health is @healthy and its detail holds @needle (NULL: anything),
 * at most @ms. */
static bool wait_state(const struct mfs_config *cfg, bool healthy, const char *needle, int ms)
{
	struct shared_view v = { 0 };

	for (int waited = 0; waited <= ms; waited += 20) {
		if (view(cfg, &v) && v.healthy == healthy && (!needle || strstr(v.detail, needle)))
			return true;
		usleep(20 * 1000);
	}
	fprintf(stderr, "state %s, detail \"%s\"; wanted %s with \"%s\"\n",
		v.healthy ? "healthy" : "unhealthy", v.detail, healthy ? "healthy" : "unhealthy",
		needle ? needle : "");
	return false;
}

static bool exists(const char *dir, const char *name)
{
	char p[PATH_MAX * 2];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return lstat(p, &st) == 0;
}

static size_t cat_index(const struct mfs_config *cfg, const char *name)
{
	return (size_t)config_category_index(cfg, name);
}

/* ------------------------------------------------------------------ cases */

static void test_healthy_dir_is_passed_through(void)
{
	struct mfs_config *cfg = setup(true);
	size_t t = cat_index(cfg, "training");
	char probe[PATH_MAX * 2], *text = NULL;
	struct shared_view v;
	struct ns *ns = NULL;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK_EQ_INT(ns_create(cfg, NULL, NULL, &ns), 0);
	CHECK_EQ_INT(start(cfg, ns), 0);
	CHECK(view(cfg, &v));
	CHECK(v.healthy);
	CHECK(strstr(v.detail, "probe written and read back") != NULL);
	CHECK(strstr(v.detail, "no other host's probe seen here yet") != NULL);
	CHECK_EQ_STR(v.path, training);
	CHECK(ns_category_passthrough(ns, t));
	CHECK(!ns_category_passthrough(ns, cat_index(cfg, "games")));

	/* The probe, its permanent sidecar, and no leftover temp file. */
	snprintf(probe, sizeof(probe), "%s/" SHARED_PROBE_DIR "/a", training);
	CHECK_EQ_INT(read_small_file(probe, &text), 0);
	CHECK(text && strncmp(text, "meshfs-probe 1\nnode a\nnonce ", 28) == 0);
	CHECK(text && strstr(text, "\ntime ") != NULL);
	free(text);
	CHECK(exists(training, SHARED_PROBE_DIR "/a.writing"));
	CHECK(!exists(training, SHARED_PROBE_DIR "/a.new.writing"));

	/* Healthy sharing: b takes no replicas of a's training data, nor a of b's; c does. */
	CHECK(!router_can_receive(cfg, g_sh, config_find_host(cfg, "b"), cfg->self, t));
	CHECK(!router_can_receive(cfg, g_sh, cfg->self, config_find_host(cfg, "b"), t));
	CHECK(router_can_receive(cfg, g_sh, config_find_host(cfg, "c"), cfg->self, t));
	shared_stop(g_sh);
	g_sh = NULL;
	/* No checker: the config alone. */
	CHECK(!router_can_receive(cfg, g_sh, cfg->self, config_find_host(cfg, "b"), t));
	ns_destroy(ns);
	teardown(cfg);
}

static void test_missing_dir_falls_back(void)
{
	struct mfs_config *cfg = setup(false);
	size_t t = cat_index(cfg, "training");
	struct ns_entry root, e;
	struct shared_view v;
	struct ns *ns = NULL;
	struct stat st;
	int fd = -1;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK_EQ_INT(ns_create(cfg, NULL, NULL, &ns), 0);
	CHECK_EQ_INT(start(cfg, ns), 0);
	CHECK(view(cfg, &v));
	CHECK(!v.healthy);
	CHECK(!v.readable);
	CHECK(strstr(v.detail, "is missing") != NULL);
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_UNREADABLE);
	/* Not shared while unhealthy: replicas may flow between a and b again. */
	CHECK(router_can_receive(cfg, g_sh, cfg->self, config_find_host(cfg, "b"), t));
	CHECK(router_can_receive(cfg, g_sh, config_find_host(cfg, "b"), cfg->self, t));
	/* Neither the probe nor a write through the namespace makes the missing dir. */
	CHECK_EQ_INT(ns_lookup(ns, NS_ROOT_INO, "training", &root), 0);
	CHECK_EQ_INT(ns_create_file(ns, root.ino, "new.npz", 0644, O_WRONLY, NULL, &fd, &e),
		     -EROFS);
	CHECK(stat(training, &st) < 0 && errno == ENOENT);

	/* It comes back (mounted): healthy and passthrough again, while running. */
	mkdir(training, 0755);
	CHECK(wait_state(cfg, true, NULL, 3000));
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_PASSTHROUGH);
	CHECK(!router_can_receive(cfg, g_sh, cfg->self, config_find_host(cfg, "b"), t));
	shared_stop(g_sh);
	g_sh = NULL;
	ns_destroy(ns);
	teardown(cfg);
}

static void test_unwritable_probe_is_unhealthy_but_readable(void)
{
	struct mfs_config *cfg = setup(true);
	size_t t = cat_index(cfg, "training");
	char blocker[PATH_MAX * 2];
	struct shared_view v;
	struct ns *ns = NULL;
	FILE *f;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	/* A file where the probe dir belongs: as good as a read-only mount, even for root. */
	snprintf(blocker, sizeof(blocker), "%s/" SHARED_PROBE_DIR, training);
	f = fopen(blocker, "w");
	CHECK(f != NULL);
	if (f)
		fclose(f);
	CHECK_EQ_INT(ns_create(cfg, NULL, NULL, &ns), 0);
	CHECK_EQ_INT(start(cfg, ns), 0);
	CHECK(view(cfg, &v));
	CHECK(!v.healthy);
	CHECK(v.readable);
	CHECK(strstr(v.detail, "cannot write the probe") != NULL);
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_LOCAL);
	CHECK(!ns_category_passthrough(ns, t));

	unlink(blocker);
	CHECK(wait_state(cfg, true, NULL, 3000));
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_PASSTHROUGH);
	/* Lost while running (unmounted): noticed within a round or two. */
	snprintf(blocker, sizeof(blocker), "rm -rf '%s'", training);
	CHECK_EQ_INT(system(blocker), 0);
	CHECK(wait_state(cfg, false, "is missing", 3000));
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_UNREADABLE);
	shared_stop(g_sh);
	g_sh = NULL;
	ns_destroy(ns);
	teardown(cfg);
}

static void test_hung_storage_is_cut_off_by_the_deadline(void)
{
	struct mfs_config *cfg = setup(true);
	char fifo[PATH_MAX * 2];
	struct shared_view v;
	int64_t t0, took;
	int fd;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	snprintf(fifo, sizeof(fifo), "%s/" SHARED_PROBE_DIR, training);
	mkdir(fifo, 0755);
	/* open(O_WRONLY) of a FIFO blocks until a reader comes: a syscall that does not answer. */
	snprintf(fifo, sizeof(fifo), "%s/" SHARED_PROBE_DIR "/a.new.writing", training);
	CHECK_EQ_INT(mkfifo(fifo, 0644), 0);
	t0 = mono_ns();
	CHECK_EQ_INT(start(cfg, NULL), 0);
	took = (mono_ns() - t0) / 1000000;
	CHECK(took >= DEADLINE_MS - 50 && took < DEADLINE_MS + 1000);
	CHECK(view(cfg, &v));
	CHECK(!v.healthy);
	CHECK(!v.readable);
	CHECK(strstr(v.detail, "no answer from") != NULL);
	/* Still stuck a few rounds later: one probe at a time, and still unhealthy. */
	usleep(3 * INTERVAL_MS * 1000);
	CHECK(wait_state(cfg, false, "hung storage", 100));
	/* Stopping does not wait for the stuck probe. */
	t0 = mono_ns();
	shared_stop(g_sh);
	g_sh = NULL;
	CHECK((mono_ns() - t0) / 1000000 < 500);
	/* Let the stuck worker go (it finds a FIFO, gives up and frees its job). */
	fd = open(fifo, O_RDONLY | O_NONBLOCK);
	CHECK(fd >= 0);
	usleep(300 * 1000);
	if (fd >= 0)
		close(fd);
	teardown(cfg);
}

/* Writes host b's probe into the shared dir with a new nonce. */
static void write_b_probe(uint64_t nonce, int64_t time)
{
	char path[PATH_MAX * 2];
	FILE *f;

	snprintf(path, sizeof(path), "%s/" SHARED_PROBE_DIR "/b", training);
	f = fopen(path, "w");
	if (!f)
		return;
	fprintf(f, "meshfs-probe 1\nnode b\nnonce %016" PRIx64 "\ntime %" PRId64 "\n", nonce,
		time);
	fclose(f);
}

static void test_other_hosts_probes(void)
{
	struct mfs_config *cfg = setup(true);
	size_t t = cat_index(cfg, "training");
	const struct cfg_host *b;
	struct ns *ns = NULL;
	uint64_t nonce = 1;
	bool ok = false;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	b = config_find_host(cfg, "b");
	CHECK_EQ_INT(ns_create(cfg, NULL, NULL, &ns), 0);
	/* b is up, and its probe is fresh: shared with b. */
	b_up = true;
	mkdir(training, 0755);
	{
		char d[PATH_MAX * 2];

		snprintf(d, sizeof(d), "%s/" SHARED_PROBE_DIR, training);
		mkdir(d, 0755);
	}
	write_b_probe(nonce++, now_s());
	CHECK_EQ_INT(start(cfg, ns), 0);
	CHECK(wait_state(cfg, true, "shared with b", 100));
	/* b keeps writing: still shared, well past the fresh window. */
	for (int i = 0; i < 40; i++) {
		write_b_probe(nonce++, now_s());
		usleep(100 * 1000);
	}
	CHECK(wait_state(cfg, true, "shared with b", 100));
	CHECK(!router_can_receive(cfg, g_sh, cfg->self, b, t));

	/* b stops writing while it is up: this is not the storage b sees. */
	ok = wait_state(cfg, false, "b (up) wrote no probe here", 4000);
	CHECK(ok);
	CHECK_EQ_INT(ns_category_mode(ns, t), NS_CAT_LOCAL);
	CHECK(router_can_receive(cfg, g_sh, cfg->self, b, t));
	CHECK(router_can_receive(cfg, g_sh, b, cfg->self, t));

	/* b goes down: nothing contradicts the config any more. */
	b_up = false;
	CHECK(wait_state(cfg, true, "no other host's probe seen here yet", 2000));
	CHECK(!router_can_receive(cfg, g_sh, cfg->self, b, t));
	shared_stop(g_sh);
	g_sh = NULL;

	/* An old probe of b, found at start, is not taken as fresh. */
	write_b_probe(nonce++, now_s() - 3600);
	CHECK_EQ_INT(start(cfg, ns), 0);
	CHECK(wait_state(cfg, true, "no other host's probe seen here yet", 100));
	shared_stop(g_sh);
	g_sh = NULL;
	ns_destroy(ns);
	teardown(cfg);
}

static struct cat_entry entry(const char *host, const char *path, uint64_t h)
{
	struct cat_entry e = {
		.host = host,
		.category = "training",
		.path = path,
		.size = 10,
		.mtime_ns = 1000,
		.hash = { h, h },
		.origin = host,
		.seq = 1,
		.confirmed_at = 1,
	};

	return e;
}

static void test_namespace_modes_and_hidden_probe(void)
{
	struct mfs_config *cfg = setup(true);
	size_t t = cat_index(cfg, "training"), a = 0, b = 1;
	struct cat_entry mine = entry("a", "same.npz", 7), theirs = entry("b", "same.npz", 7);
	struct cat_entry probe = entry("b", SHARED_PROBE_DIR "/b", 9);
	struct ns_entry root, e;
	struct ns_found found;
	struct ns *ns = NULL;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK_EQ_STR(cfg->hosts[b].name, "b");
	CHECK_EQ_INT(ns_create(cfg, NULL, NULL, &ns), 0);
	CHECK_EQ_INT(ns_put_version(ns, a, t, &mine), 0);
	CHECK_EQ_INT(ns_put_version(ns, b, t, &theirs), 0);
	CHECK_EQ_INT(ns_find_file(ns, t, "same.npz", &found, NULL, NULL), 0);
	CHECK_EQ_INT(found.host, (int)a);
	/* This node's copy cannot be read: b's identical one is shown, and back. */
	ns_set_category_mode(ns, t, NS_CAT_UNREADABLE);
	CHECK_EQ_INT(ns_find_file(ns, t, "same.npz", &found, NULL, NULL), 0);
	CHECK_EQ_INT(found.host, (int)b);
	CHECK(!ns_category_passthrough(ns, t));
	ns_set_category_mode(ns, t, NS_CAT_LOCAL);
	CHECK_EQ_INT(ns_find_file(ns, t, "same.npz", &found, NULL, NULL), 0);
	CHECK_EQ_INT(found.host, (int)a);

	/* Probe files are never shown, from the catalog, the indexer or a peer. */
	CHECK_EQ_INT(ns_put_version(ns, b, t, &probe), 0);
	CHECK_EQ_INT(ns_put_dir(ns, t, SHARED_PROBE_DIR), 0);
	CHECK_EQ_INT(ns_find_file(ns, t, SHARED_PROBE_DIR "/b", &found, NULL, NULL), -ENOENT);
	CHECK_EQ_INT(ns_lookup(ns, NS_ROOT_INO, "training", &root), 0);
	CHECK_EQ_INT(ns_lookup(ns, root.ino, SHARED_PROBE_DIR, &e), -ENOENT);
	/* ... and the name is reserved at a category root. */
	CHECK_EQ_INT(ns_mkdir(ns, root.ino, SHARED_PROBE_DIR, 0755, NULL, &e), -EPERM);
	CHECK(ns_path_hidden(SHARED_PROBE_DIR));
	CHECK(ns_path_hidden(SHARED_PROBE_DIR "/x"));
	CHECK(!ns_path_hidden(SHARED_PROBE_DIR "x"));
	CHECK(!ns_path_hidden("sub/" SHARED_PROBE_DIR));
	ns_destroy(ns);
	teardown(cfg);
}

static void test_no_shared_storage_costs_nothing(void)
{
	struct mfs_config *cfg = setup(true);
	struct mfs_config *other = NULL;
	struct shared_view *v = NULL;
	char path[PATH_MAX + 32], err[512];
	size_t n = 5;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	/* Node c has no shared storage: no checker, no thread, an empty list. */
	snprintf(path, sizeof(path), "%s/cluster.yaml", base);
	setenv("MESHFS_NODE", "c", 1);
	{
		FILE *f = fopen(path, "r+");

		/* Drop the "node: a" line so $MESHFS_NODE decides. */
		if (f) {
			fputs("#     ", f);
			fclose(f);
		}
	}
	CHECK_EQ_INT(config_load(path, &other, err, sizeof(err)), 0);
	unsetenv("MESHFS_NODE");
	if (other) {
		CHECK_EQ_STR(other->node, "c");
		struct shared *none = NULL;

		CHECK_EQ_INT(shared_start(other, NULL, NULL, NULL, &none), 0);
		CHECK(none == NULL);
		CHECK_EQ_INT(shared_list(none, &v, &n), 0);
		CHECK_EQ_INT(n, 0);
		free(v);
		shared_stop(none);
		config_free(other);
	}
	teardown(cfg);
}

int main(void)
{
	static const struct tu_case cases[] = {
		TEST(test_healthy_dir_is_passed_through),
		TEST(test_missing_dir_falls_back),
		TEST(test_unwritable_probe_is_unhealthy_but_readable),
		TEST(test_hung_storage_is_cut_off_by_the_deadline),
		TEST(test_other_hosts_probes),
		TEST(test_namespace_modes_and_hidden_probe),
		TEST(test_no_shared_storage_costs_nothing),
	};

	log_set_sink(capture_sink, NULL);
	return tu_run(cases, ARRAY_SIZE(cases));
}
