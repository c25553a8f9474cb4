/*
 * test_config — unit tests for sync/config.c: the real distributed_hosts.yaml example loads
 * unchanged, every key and default, sizes, node resolution, and for each kind of mistake the
 * exact line and key the error names. Warnings are captured through log_set_sink().
 *
 * Test configs are written to a private temp dir (removed at exit) one line per string
 * literal, so the line numbers the checks expect can be counted in the source.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sync/config.h"
#include "sync/log.h"
#include "tests/unit/testutil.h"

#define MAX_WARNINGS 64

static char tmpdir[PATH_MAX];
static char cfg_path[PATH_MAX + 16];
static char err[1024];

static struct {
	char lines[MAX_WARNINGS][512];
	int n;
} warnings;

static void capture(int level, const char *line, void *arg)
{
	if (level == LOG_WARNING && warnings.n < MAX_WARNINGS)
		snprintf(warnings.lines[warnings.n++], sizeof(warnings.lines[0]), "%s", line);
}

/* How many captured warnings contain @needle. */
static int warned(const char *needle)
{
	int n = 0;

	for (int i = 0; i < warnings.n; i++)
		n += strstr(warnings.lines[i], needle) != NULL;
	return n;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_tmpdir(void)
{
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tmp(void)
{
	if (!tmpdir[0]) {
		const char *base = getenv("TMPDIR");

		snprintf(tmpdir, sizeof(tmpdir), "%s/test_config.XXXXXX", base ? base : "/tmp");
		if (!mkdtemp(tmpdir)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(rm_tmpdir);
	}
	return tmpdir;
}

/* Writes @text to <tmpdir>/@name; returns the path in a static buffer. */
static const char *write_file(const char *name, const char *text)
{
	static char path[PATH_MAX + 64];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmp(), name);
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
	return path;
}

/* Loads @text as <tmpdir>/cfg.yaml with warnings captured; err holds the error, if any. */
static int load(const char *text, struct mfs_config **cfg)
{
	int ret;

	snprintf(cfg_path, sizeof(cfg_path), "%s", write_file("cfg.yaml", text));
	memset(&warnings, 0, sizeof(warnings));
	err[0] = '\0';
	log_set_sink(capture, NULL);
	ret = config_load(cfg_path, cfg, err, sizeof(err));
	log_set_sink(NULL, NULL);
	return ret;
}

/* True when err is exactly "<cfg_path><rest>"; prints both when not. */
static bool err_is(const char *rest)
{
	size_t n = strlen(cfg_path);

	if (strncmp(err, cfg_path, n) == 0 && strcmp(err + n, rest) == 0)
		return true;
	fprintf(stderr, "  got error:      %s\n  expected error: %s%s\n", err, cfg_path, rest);
	return false;
}

static bool contains(const char *hay, const char *needle)
{
	if (hay && strstr(hay, needle))
		return true;
	fprintf(stderr, "  '%s'\n  does not contain '%s'\n", hay ? hay : "(null)", needle);
	return false;
}

/* Expects @text to fail with -EINVAL and exactly "<cfg_path>@rest". */
static void expect_error(const char *text, const char *rest)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_INT(load(text, &cfg), -EINVAL);
	CHECK(cfg == NULL);
	CHECK(err_is(rest));
	config_free(cfg);
}

static const char *test_data(void)
{
	const char *d = getenv("MESHFS_TEST_DATA");

	return d ? d : "tests/data";
}

static void test_example_hosts_file(void)
{
	static const char *const unknown[] = {
		"p2p_voters",
		"auto_sync.gossip_interval_seconds",
		"auto_sync.skip_nfs_sync",
		"auto_sync.max_concurrent_syncs",
		"auto_sync.min_games_to_sync",
		"auto_sync.exclude_hosts",
		"sync_routing.max_disk_usage_percent",
		"sync_routing.target_disk_usage_percent",
		"sync_routing.min_free_disk_percent",
		"sync_routing.priority_hosts",
		"sync_routing.allowed_external_storage",
		"sync_routing.excluded_hosts[].receive_games",
		"sync_routing.excluded_hosts[].receive_npz",
		"sync_routing.excluded_hosts[].receive_models",
		"sync_routing.excluded_hosts[].reason",
		"hosts.*.is_coordinator",
		"hosts.*.memory_gb",
		"hosts.*.cpus",
		"hosts.*.p2p_enabled",
		"hosts.*.gpu'",
		"hosts.*.gpu_vram_gb",
		"hosts.*.training_enabled",
		"hosts.*.selfplay_enabled",
		"hosts.*.vast_instance_id",
		"hosts.*.nat_blocked",
		"hosts.*.use_external_storage",
		"hosts.*.external_storage_path",
	};
	const struct cfg_host *a, *b, *vast, *runpod, *mac, *old;
	struct mfs_config *cfg = NULL;
	char path[PATH_MAX], key[PATH_MAX], *dir;
	int games, training, models;

	snprintf(path, sizeof(path), "%s/../../../shared/examples/distributed_hosts.yaml",
		 test_data());
	if (access(path, R_OK) != 0) {
		printf("note: %s not found, example test skipped\n", path);
		return;
	}
	setenv("MESHFS_NODE", "lambda-gh200-a", 1);
	memset(&warnings, 0, sizeof(warnings));
	log_set_sink(capture, NULL);
	CHECK_EQ_INT(config_load(path, &cfg, err, sizeof(err)), 0);
	log_set_sink(NULL, NULL);
	unsetenv("MESHFS_NODE");
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK_EQ_STR(cfg->node, "lambda-gh200-a");
	CHECK_EQ_STR(cfg->self->name, "lambda-gh200-a");
	CHECK_EQ_INT(cfg->n_hosts, 7);
	games = config_category_index(cfg, "games");
	training = config_category_index(cfg, "training");
	models = config_category_index(cfg, "models");
	CHECK(games >= 0 && training >= 0 && models >= 0);

	a = config_find_host(cfg, "lambda-gh200-a");
	b = config_find_host(cfg, "lambda-gh200-b");
	vast = config_find_host(cfg, "vast-4090-17");
	runpod = config_find_host(cfg, "runpod-h100-3");
	mac = config_find_host(cfg, "mac-studio");
	old = config_find_host(cfg, "nebius-h100-old");
	CHECK(a == cfg->self && b && vast && runpod && mac && old);
	if (!(a && b && vast && runpod && mac && old && games >= 0 && training >= 0 &&
	      models >= 0))
		goto out;

	/* training_data is the training category; models has no override, so root + path. */
	CHECK_EQ_STR(a->storage_paths[games], "/lambda/nfs/RingRift/data/games");
	CHECK_EQ_STR(a->storage_paths[training], "/lambda/nfs/RingRift/data/training");
	CHECK(a->storage_paths[models] == NULL);
	dir = config_category_dir(cfg, a, training);
	CHECK_EQ_STR(dir, "/lambda/nfs/RingRift/data/training");
	free(dir);
	dir = config_category_dir(cfg, a, models);
	CHECK_EQ_STR(dir, "/home/ubuntu/ringrift/ai-service/models");
	free(dir);
	dir = config_category_dir(cfg, b, training);
	CHECK_EQ_STR(dir, "/home/ubuntu/ringrift/ai-service/data/training");
	free(dir);
	CHECK_EQ_STR(a->root, "/home/ubuntu/ringrift/ai-service");
	CHECK_EQ_STR(a->role, "gpu_training_primary");
	CHECK_EQ_STR(a->ssh_user, "ubuntu");
	if (getenv("HOME") && strcmp(getenv("HOME"), "/") != 0) {
		snprintf(key, sizeof(key), "%s/.ssh/id_cluster", getenv("HOME"));
		CHECK_EQ_STR(a->ssh_key, key);
	}

	/* tailscale_ip wins over ssh_host; ssh_host alone is used. */
	CHECK_EQ_STR(a->address, "127.0.1.11");
	CHECK_EQ_STR(runpod->address, "127.0.1.30");
	CHECK_EQ_STR(vast->address, "127.0.5.17");
	CHECK_EQ_STR(mac->address, "127.0.1.10");

	CHECK_EQ_STR(old->status, "retired");
	CHECK(!old->active);
	CHECK(a->active && vast->active && mac->active);
	CHECK(vast->is_ephemeral && runpod->is_ephemeral && !a->is_ephemeral);
	CHECK_EQ_INT(vast->ssh_port, 41822);
	CHECK_EQ_INT(runpod->ssh_port, 22031);
	CHECK_EQ_INT(a->ssh_port, 22);
	CHECK(vast->bandwidth_mbps == 400);
	CHECK_EQ_INT(old->data_server_port, 8766);
	CHECK_EQ_INT(a->transports, CFG_XPORT_ALL);

	CHECK_EQ_INT(cfg->sync_routing.n_excluded_hosts, 1);
	if (cfg->sync_routing.n_excluded_hosts == 1)
		CHECK_EQ_STR(cfg->sync_routing.excluded_hosts[0], "mac-studio");
	CHECK_EQ_INT(cfg->sync_routing.replication_target, 2);
	CHECK(cfg->auto_sync.enabled);
	CHECK_EQ_INT(cfg->auto_sync.interval_seconds, 60);
	CHECK(cfg->auto_sync.bandwidth_limit_mbps == 100);
	CHECK_EQ_INT(cfg->auto_sync.n_host_bandwidth_overrides, 3);
	if (cfg->auto_sync.n_host_bandwidth_overrides == 3) {
		CHECK_EQ_STR(cfg->auto_sync.host_bandwidth_overrides[0].pattern, "vast-*");
		CHECK(cfg->auto_sync.host_bandwidth_overrides[0].mbps == 50);
		CHECK_EQ_STR(cfg->auto_sync.host_bandwidth_overrides[1].pattern, "runpod-*");
		CHECK(cfg->auto_sync.host_bandwidth_overrides[1].mbps == 100);
		CHECK_EQ_STR(cfg->auto_sync.host_bandwidth_overrides[2].pattern, "hetzner-*");
		CHECK(cfg->auto_sync.host_bandwidth_overrides[2].mbps == 30);
	}

	/* Its own tailscale address is loopback, so no token is needed. */
	CHECK_EQ_STR(cfg->listen_host, "127.0.1.11");
	CHECK_EQ_INT(cfg->listen_port, 8766);
	CHECK(cfg->token == NULL);
	CHECK_EQ_STR(cfg->state_dir, "/var/lib/meshfs/lambda-gh200-a");

	/* Every unknown key warned about exactly once, and nothing else. */
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		snprintf(key, sizeof(key), "ignoring unknown key '%s", unknown[i]);
		if (warned(key) != 1) {
			fprintf(stderr, "  %d warnings for %s\n", warned(key), unknown[i]);
			CHECK(warned(key) == 1);
		}
	}
	CHECK_EQ_INT(warnings.n, (int)(sizeof(unknown) / sizeof(unknown[0])));
	CHECK(contains(warnings.lines[0], "distributed_hosts.yaml:"));
	CHECK_EQ_INT(warned("distributed_hosts.yaml:60: ignoring unknown key 'hosts.*.gpu'"), 1);
out:
	config_free(cfg);
}

static void test_defaults(void)
{
	struct mfs_config *cfg = NULL;
	const struct cfg_host *h;

	setenv("MESHFS_NODE", "solo", 1);
	CHECK_EQ_INT(load("hosts:\n"
			  "  solo: {}\n",
			  &cfg),
		     0);
	unsetenv("MESHFS_NODE");
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK_EQ_STR(cfg->path, cfg_path);
	CHECK_EQ_STR(cfg->node, "solo");
	CHECK(cfg->token_file == NULL && cfg->token == NULL);
	CHECK_EQ_STR(cfg->state_dir, "/var/lib/meshfs/solo");
	CHECK_EQ_STR(cfg->listen_host, "127.0.0.1");
	CHECK_EQ_INT(cfg->listen_port, CFG_DEFAULT_PORT);
	CHECK_EQ_INT(cfg->cache_max_size, 0);
	CHECK(cfg->cache_min_free_pct == 0);
	CHECK_EQ_INT(cfg->cache_min_free_bytes, 0);
	CHECK_EQ_INT(cfg->n_categories, 3);
	if (cfg->n_categories == 3) {
		CHECK_EQ_STR(cfg->categories[0].name, "games");
		CHECK_EQ_STR(cfg->categories[0].path, "data/games");
		CHECK_EQ_STR(cfg->categories[1].name, "models");
		CHECK_EQ_STR(cfg->categories[1].path, "models");
		CHECK_EQ_STR(cfg->categories[2].name, "training");
		CHECK_EQ_STR(cfg->categories[2].path, "data/training");
	}
	CHECK(cfg->auto_sync.enabled);
	CHECK_EQ_INT(cfg->auto_sync.strategy, CFG_STRATEGY_AUTO);
	CHECK_EQ_INT(cfg->auto_sync.interval_seconds, 60);
	CHECK(cfg->auto_sync.bandwidth_limit_mbps == 0);
	CHECK_EQ_INT(cfg->auto_sync.n_host_bandwidth_overrides, 0);
	CHECK(cfg->auto_sync.host_bandwidth_overrides == NULL);
	CHECK_EQ_INT(cfg->auto_sync.read_deadline_seconds, 30);
	CHECK_EQ_INT(cfg->auto_sync.circuit_failure_threshold, 5);
	CHECK_EQ_INT(cfg->auto_sync.circuit_recovery_seconds, 60);
	CHECK_EQ_INT(cfg->auto_sync.shutdown_flush_seconds, 30);
	CHECK_EQ_INT(cfg->snapshot_interval_seconds, 30);
	CHECK(cfg->publish_quiet_seconds == 2);
	CHECK_EQ_INT(cfg->sync_routing.n_excluded_hosts, 0);
	CHECK_EQ_INT(cfg->sync_routing.replication_target, 2);
	CHECK_EQ_INT(cfg->n_hosts, 1);

	h = cfg->self;
	CHECK(h == &cfg->hosts[0]);
	CHECK_EQ_STR(h->name, "solo");
	CHECK_EQ_INT(h->line, 2);
	CHECK(h->address == NULL && h->root == NULL && h->role == NULL);
	CHECK(h->ssh_user == NULL && h->ssh_key == NULL);
	CHECK_EQ_INT(h->data_server_port, 8766);
	for (int i = 0; i < CFG_MAX_CATEGORIES; i++)
		CHECK(h->storage_paths[i] == NULL);
	CHECK_EQ_INT(h->n_shared_storage, 0);
	CHECK_EQ_STR(h->status, "ready");
	CHECK(h->active && !h->is_ephemeral);
	CHECK_EQ_INT(h->ssh_port, 22);
	CHECK(h->bandwidth_mbps == 0);
	CHECK_EQ_INT(h->transports, CFG_XPORT_ALL);
	CHECK_EQ_INT(h->transport_order[0], CFG_XPORT_HTTP);
	CHECK_EQ_INT(h->transport_order[1], CFG_XPORT_SSH);
	CHECK_EQ_INT(h->transport_order[2], CFG_XPORT_ARIA2);
	/* Neither root nor override: no directory. */
	CHECK(config_category_dir(cfg, h, 0) == NULL);
	CHECK_EQ_INT(warnings.n, 0);
	config_free(cfg);
}

/* Every key set to a non-default value, from tests/data/config/full.yaml. */
static void test_full_file(void)
{
	struct mfs_config *cfg = NULL;
	const struct cfg_host *h, *laptop;
	char path[PATH_MAX], dir[PATH_MAX], want[PATH_MAX + 64], *cat;
	int logs;

	snprintf(path, sizeof(path), "%s/config/full.yaml", test_data());
	if (!realpath(path, dir)) {
		perror(path);
		CHECK(0);
		return;
	}
	*strrchr(dir, '/') = '\0';
	memset(&warnings, 0, sizeof(warnings));
	log_set_sink(capture, NULL);
	CHECK_EQ_INT(config_load(path, &cfg, err, sizeof(err)), 0);
	log_set_sink(NULL, NULL);
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK_EQ_INT(warnings.n, 0);
	CHECK_EQ_STR(cfg->node, "store-1");
	snprintf(want, sizeof(want), "%s/token.txt", dir);
	CHECK_EQ_STR(cfg->token_file, want);
	CHECK_EQ_STR(cfg->token, "s3cr3t-token");
	snprintf(want, sizeof(want), "%s/state/store-1", dir);
	CHECK_EQ_STR(cfg->state_dir, want);
	CHECK_EQ_STR(cfg->listen_host, "::1");
	CHECK_EQ_INT(cfg->listen_port, 9100);
	CHECK(cfg->cache_max_size == 1ULL << 40);
	CHECK(cfg->cache_min_free_bytes == 20ULL << 30);
	CHECK(cfg->cache_min_free_pct == 0);

	CHECK_EQ_INT(cfg->n_categories, 4);
	logs = config_category_index(cfg, "logs");
	CHECK_EQ_INT(logs, 3);
	CHECK_EQ_STR(cfg->categories[1].path, "checkpoints");
	CHECK_EQ_STR(cfg->categories[3].path, "var/log");
	CHECK_EQ_INT(config_category_index(cfg, "nope"), -ENOENT);

	CHECK(!cfg->auto_sync.enabled);
	CHECK_EQ_INT(cfg->auto_sync.strategy, CFG_STRATEGY_BROADCAST);
	CHECK_EQ_INT(cfg->auto_sync.interval_seconds, 15);
	CHECK(cfg->auto_sync.bandwidth_limit_mbps == 250.5);
	CHECK_EQ_INT(cfg->auto_sync.n_host_bandwidth_overrides, 2);
	if (cfg->auto_sync.n_host_bandwidth_overrides == 2) {
		CHECK_EQ_STR(cfg->auto_sync.host_bandwidth_overrides[1].pattern, "store-?");
		CHECK(cfg->auto_sync.host_bandwidth_overrides[1].mbps == 1000);
	}
	CHECK_EQ_INT(cfg->auto_sync.read_deadline_seconds, 12);
	CHECK_EQ_INT(cfg->auto_sync.circuit_failure_threshold, 3);
	CHECK_EQ_INT(cfg->auto_sync.circuit_recovery_seconds, 90);
	CHECK_EQ_INT(cfg->auto_sync.shutdown_flush_seconds, 0);
	CHECK_EQ_INT(cfg->snapshot_interval_seconds, 45);
	CHECK(cfg->publish_quiet_seconds == 0.5);
	CHECK_EQ_INT(cfg->sync_routing.n_excluded_hosts, 2);
	if (cfg->sync_routing.n_excluded_hosts == 2) {
		CHECK_EQ_STR(cfg->sync_routing.excluded_hosts[0], "laptop");
		CHECK_EQ_STR(cfg->sync_routing.excluded_hosts[1], "kiosk");
	}
	CHECK_EQ_INT(cfg->sync_routing.replication_target, 3);

	h = cfg->self;
	laptop = config_find_host(cfg, "laptop");
	CHECK(h && laptop && config_find_host(cfg, "nope") == NULL);
	if (!h || !laptop || logs < 0)
		goto out;
	CHECK_EQ_STR(h->address, "127.0.3.1");
	CHECK_EQ_INT(h->data_server_port, 9100);
	CHECK_EQ_STR(h->root, "/srv/cluster");
	CHECK_EQ_STR(h->storage_paths[0], "/mnt/shared/games");
	CHECK(h->storage_paths[1] == NULL);
	CHECK_EQ_STR(h->storage_paths[2], "/mnt/shared/training");
	/* Relative to the config file's directory, then normalised. */
	snprintf(want, sizeof(want), "%.*s/logs", (int)(strrchr(dir, '/') - dir), dir);
	CHECK_EQ_STR(h->storage_paths[logs], want);
	cat = config_category_dir(cfg, h, 1);
	CHECK_EQ_STR(cat, "/srv/cluster/checkpoints");
	free(cat);
	CHECK(config_category_dir(cfg, h, 4) == NULL);
	CHECK_EQ_INT(h->n_shared_storage, 2);
	if (h->n_shared_storage == 2) {
		CHECK_EQ_STR(h->shared_storage[0], "/mnt/shared");
		CHECK_EQ_STR(h->shared_storage[1], "/mnt/other");
	}
	CHECK_EQ_STR(h->role, "storage");
	CHECK_EQ_STR(h->status, "Ready");
	CHECK(h->active && !h->is_ephemeral);
	CHECK_EQ_STR(h->ssh_user, "ops");
	CHECK_EQ_INT(h->ssh_port, 2222);
	snprintf(want, sizeof(want), "%s/keys/id_store", dir);
	CHECK_EQ_STR(h->ssh_key, want);
	CHECK(h->bandwidth_mbps == 10000);
	CHECK_EQ_INT(h->transports, CFG_XPORT_SSH | CFG_XPORT_HTTP);
	CHECK_EQ_INT(h->transport_order[0], CFG_XPORT_SSH);
	CHECK_EQ_INT(h->transport_order[1], CFG_XPORT_HTTP);
	CHECK_EQ_INT(h->transport_order[2], 0);

	CHECK_EQ_STR(laptop->address, "127.0.3.2");
	CHECK(laptop->role == NULL);
	CHECK(!laptop->active);
	CHECK_EQ_INT(laptop->transport_order[0], CFG_XPORT_ARIA2);
	CHECK_EQ_INT(laptop->transport_order[1], CFG_XPORT_HTTP);
	CHECK_EQ_INT(laptop->transport_order[2], CFG_XPORT_SSH);
out:
	config_free(cfg);
}

static void test_parse_size(void)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
		{ "0", 0 },
		{ "1234", 1234 },
		{ "512B", 512 },
		{ "1K", 1024 },
		{ "1k", 1024 },
		{ "3KB", 3072 },
		{ "3KiB", 3072 },
		{ "5M", 5ULL << 20 },
		{ "200G", 214748364800ULL },
		{ "200GiB", 214748364800ULL },
		{ "2T", 2ULL << 40 },
		{ "16777215T", 16777215ULL << 40 },
		{ "18446744073709551615", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "-1", "-1G", "+5", " 5", "5 ", "G", "1.5G", "12Q", "5iB", "5Gb", "5GiBs",
		"0x10", "16777216T", "18446744073709551616", "99999999999999999999999",
	};
	uint64_t v;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = 7;
		CHECK_EQ_INT(config_parse_size(good[i].s, &v), 0);
		if (v != good[i].v) {
			fprintf(stderr, "  %s -> %llu\n", good[i].s, (unsigned long long)v);
			CHECK(v == good[i].v);
		}
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 7;
		if (config_parse_size(bad[i], &v) != -EINVAL || v != 7) {
			fprintf(stderr, "  '%s' accepted\n", bad[i]);
			CHECK(0);
		}
	}
}

static void test_cache(void)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_INT(load("node: a\n"
			  "cache: { max_size: 200G, min_free: 10% }\n"
			  "hosts: { a: {} }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK(cfg->cache_max_size == 200ULL << 30);
		CHECK(cfg->cache_min_free_pct == 10);
		CHECK_EQ_INT(cfg->cache_min_free_bytes, 0);
	}
	config_free(cfg);
	CHECK_EQ_INT(load("node: a\n"
			  "cache:\n"
			  "  max_size: 1048576\n"
			  "  min_free: 12.5%\n"
			  "hosts: { a: {} }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK(cfg->cache_max_size == 1048576);
		CHECK(cfg->cache_min_free_pct == 12.5);
	}
	config_free(cfg);

	expect_error("node: a\n"
		     "cache:\n"
		     "  max_size: 12Q\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'cache.max_size': expected a size like 200G, got '12Q'");
	expect_error("node: a\n"
		     "cache:\n"
		     "  max_size: -5G\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'cache.max_size': expected a size like 200G, got '-5G'");
	expect_error("node: a\n"
		     "cache:\n"
		     "  min_free: 150%\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'cache.min_free': expected a size like 20G or a percentage like "
		     "10%, got '150%'");
	expect_error("node: a\n"
		     "cache:\n"
		     "  min_free: -1%\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'cache.min_free': expected a size like 20G or a percentage like "
		     "10%, got '-1%'");
	expect_error("node: a\n"
		     "cache: [1G]\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'cache': expected a map (max_size, min_free), got a list");
}

static void test_node_resolution(void)
{
	static const char two_hosts[] = "hosts:\n"
					"  a: {}\n"
					"  b: {}\n";
	struct mfs_config *cfg = NULL;
	char text[256], host[HOST_NAME_MAX + 1];

	/* The node key beats $MESHFS_NODE. */
	setenv("MESHFS_NODE", "b", 1);
	snprintf(text, sizeof(text), "node: a\n%s", two_hosts);
	CHECK_EQ_INT(load(text, &cfg), 0);
	if (cfg)
		CHECK_EQ_STR(cfg->self->name, "a");
	config_free(cfg);

	/* No key (or an empty one): $MESHFS_NODE. */
	CHECK_EQ_INT(load(two_hosts, &cfg), 0);
	if (cfg)
		CHECK_EQ_STR(cfg->self->name, "b");
	config_free(cfg);
	snprintf(text, sizeof(text), "node:\n%s", two_hosts);
	CHECK_EQ_INT(load(text, &cfg), 0);
	if (cfg)
		CHECK_EQ_STR(cfg->node, "b");
	config_free(cfg);
	unsetenv("MESHFS_NODE");

	/* Then /etc/meshfs/node-id, then the host name: testable only without the file. */
	if (access("/etc/meshfs/node-id", F_OK) == 0 || gethostname(host, sizeof(host)) < 0) {
		printf("note: /etc/meshfs/node-id exists, host name fallback not tested\n");
		return;
	}
	host[sizeof(host) - 1] = '\0';
	snprintf(text, sizeof(text), "hosts:\n  a: {}\n  \"%s\": {}\n", host);
	CHECK_EQ_INT(load(text, &cfg), 0);
	if (cfg)
		CHECK_EQ_STR(cfg->node, host);
	config_free(cfg);
}

static void test_node_not_in_hosts(void)
{
	struct mfs_config *cfg = NULL;
	char text[4096];
	size_t o;

	expect_error("node: zed\n"
		     "hosts:\n"
		     "  a: {}\n"
		     "  b: {}\n",
		     ":1: key 'node': expected one of the hosts (a, b), got 'zed'");

	setenv("MESHFS_NODE", "zed", 1);
	expect_error("# comment\n"
		     "hosts:\n"
		     "  a: {}\n",
		     ":2: key 'hosts': this node is 'zed' (from $MESHFS_NODE), which is not one "
		     "of the hosts (a); set 'node' or $MESHFS_NODE");

	/* A long list is cut short but says how many there are. */
	o = snprintf(text, sizeof(text), "hosts:\n");
	for (int i = 0; i < 60; i++)
		o += snprintf(text + o, sizeof(text) - o, "  host-number-%02d: {}\n", i);
	CHECK_EQ_INT(load(text, &cfg), -EINVAL);
	CHECK(contains(err, "(host-number-00, host-number-01, "));
	CHECK(contains(err, ", ... (60 in all))"));
	CHECK(strlen(err) < 400);
	unsetenv("MESHFS_NODE");
}

static void test_syntax_errors(void)
{
	expect_error("hosts:\n"
		     "  a:\n"
		     "    address: 127.0.0.1\n"
		     "   bad: x\n",
		     ":4:4: YAML syntax error: did not find expected key (while parsing a block "
		     "mapping)");
	expect_error("node: a\n"
		     "hosts:\n"
		     "\ta: {}\n",
		     ":3:1: YAML syntax error: found character that cannot start any token (while "
		     "scanning for the next token)");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: {}\n"
		     "  b: *nope\n",
		     ":4:6: YAML syntax error: found undefined alias");
	/* Invalid UTF-8 is found by the reader, which counts bytes; still FILE:LINE:COL. */
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: {}\n"
		     "bad: \xff\n",
		     ":4:6: YAML syntax error: invalid leading UTF-8 octet");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: {}\n"
		     "---\n"
		     "x: 1\n",
		     ":5: expected one YAML document, found a second one");
}

static void test_empty_and_missing(void)
{
	struct mfs_config *cfg = NULL;
	char path[PATH_MAX + 32];

	expect_error("", ": the file is empty (expected a map with at least the key 'hosts')");
	expect_error("# nothing but a comment\n\n",
		     ": the file is empty (expected a map with at least the key 'hosts')");
	expect_error("- a\n"
		     "- b\n",
		     ":1: expected a map at the top level, got a list");
	expect_error("node: a\n", ": missing required key 'hosts' (the map of cluster hosts)");
	expect_error("node: a\n"
		     "hosts:\n",
		     ":2: key 'hosts': expected a map of host names to host settings, got nothing");
	expect_error("node: a\n"
		     "hosts: {}\n",
		     ":2: key 'hosts': expected at least one host");
	expect_error("node: a\n"
		     "hosts: [a, b]\n",
		     ":2: key 'hosts': expected a map of host names to host settings, got a list");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: [1]\n",
		     ":3: key 'hosts.a': expected a map of host settings, got a list");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: {}\n"
		     "  ../b: {}\n",
		     ":4: key 'hosts': expected a host name (no '/', ',' or spaces, not starting "
		     "with '.'), got '../b'");

	snprintf(path, sizeof(path), "%s/does-not-exist.yaml", tmp());
	CHECK_EQ_INT(config_load(path, &cfg, err, sizeof(err)), -ENOENT);
	CHECK(cfg == NULL);
	CHECK(contains(err, path));
	CHECK(contains(err, "No such file or directory"));
	CHECK_EQ_INT(config_load(tmp(), &cfg, err, sizeof(err)), -EISDIR);
	/* err may be NULL. */
	CHECK_EQ_INT(config_load(path, &cfg, NULL, 0), -ENOENT);
}

static void test_wrong_types_and_values(void)
{
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  - enabled\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync': expected a map, got a list");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  interval_seconds: abc\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync.interval_seconds': expected a positive integer, "
		     "got 'abc'");
	expect_error("node: a\n"
		     "auto_sync: { interval_seconds: 0 }\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'auto_sync.interval_seconds': expected a positive integer, got '0'");
	expect_error("node: a\n"
		     "auto_sync: { read_deadline_seconds: 1.5 }\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'auto_sync.read_deadline_seconds': expected a positive integer, got "
		     "'1.5'");
	expect_error("node: a\n"
		     "auto_sync: { circuit_failure_threshold: 99999999999 }\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'auto_sync.circuit_failure_threshold': expected a positive integer, "
		     "got '99999999999'");
	expect_error("node: a\n"
		     "auto_sync: { shutdown_flush_seconds: -1 }\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'auto_sync.shutdown_flush_seconds': expected a non-negative integer, "
		     "got '-1'");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  strategy: greedy\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync.strategy': expected auto, hybrid, ephemeral or broadcast, "
		     "got 'greedy'");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  enabled: maybe\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync.enabled': expected true or false, got 'maybe'");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  bandwidth_limit_mbps: fast\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync.bandwidth_limit_mbps': expected a number >= 0, "
		     "got 'fast'");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  host_bandwidth_overrides:\n"
		     "    \"vast-*\": nan\n"
		     "hosts: { a: {} }\n",
		     ":4: key 'auto_sync.host_bandwidth_overrides.vast-*': expected a number >= 0, "
		     "got 'nan'");
	expect_error("node: a\n"
		     "auto_sync:\n"
		     "  host_bandwidth_overrides: [50]\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'auto_sync.host_bandwidth_overrides': expected a map of host name "
		     "patterns to megabits per second, got a list");
	expect_error("node: a\n"
		     "publish_quiet_seconds: -0.5\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'publish_quiet_seconds': expected a number >= 0, got '-0.5'");
	expect_error("node: a\n"
		     "snapshot_interval_seconds: {}\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'snapshot_interval_seconds': expected a non-negative integer, got a "
		     "map");
	expect_error("node: [a]\n"
		     "hosts: { a: {} }\n",
		     ":1: key 'node': expected a host name, got a list");
	expect_error("node: a\n"
		     "sync_routing:\n"
		     "  replication_target: two\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'sync_routing.replication_target': expected a non-negative integer, "
		     "got 'two'");
	expect_error("node: a\n"
		     "sync_routing:\n"
		     "  excluded_hosts: mac-studio\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'sync_routing.excluded_hosts': expected a list of host names, got "
		     "'mac-studio'");
	expect_error("node: a\n"
		     "sync_routing:\n"
		     "  excluded_hosts:\n"
		     "    - reason: no name\n"
		     "hosts: { a: {} }\n",
		     ":4: key 'sync_routing.excluded_hosts': expected a host name or a map with "
		     "'name', got a map without 'name'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    is_ephemeral: sometimes\n",
		     ":4: key 'hosts.a.is_ephemeral': expected true or false, got 'sometimes'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    storage_paths: [/x]\n",
		     ":4: key 'hosts.a.storage_paths': expected a map of category names to paths, "
		     "got a list");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    shared_storage: /x\n",
		     ":4: key 'hosts.a.shared_storage': expected a list of paths, got '/x'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    role: { x: 1 }\n",
		     ":4: key 'hosts.a.role': expected a string, got a map");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    bandwidth_mbps: 1e999\n",
		     ":4: key 'hosts.a.bandwidth_mbps': expected a number >= 0, got '1e999'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  b: {}\n"
		     "  a:\n"
		     "    ssh_key: ~other/.ssh/id\n",
		     ":5: key 'hosts.a.ssh_key': expected a path ('~user' paths are not "
		     "supported), got '~other/.ssh/id'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    ? [x]\n"
		     "    : 1\n",
		     ":4: key 'hosts.a': expected a string as key, got a list");
}

static void test_ports(void)
{
	struct mfs_config *cfg = NULL;

	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    data_server_port: 0\n",
		     ":4: key 'hosts.a.data_server_port': expected a port number (1-65535), "
		     "got '0'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    data_server_port: 70000\n",
		     ":4: key 'hosts.a.data_server_port': expected a port number (1-65535), got "
		     "'70000'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    ssh_port: ssh\n",
		     ":4: key 'hosts.a.ssh_port': expected a port number (1-65535), got 'ssh'");
	expect_error("node: a\n"
		     "listen: 127.0.0.1:0\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': expected HOST:PORT with a port in 1-65535, got "
		     "'127.0.0.1:0'");
	expect_error("node: a\n"
		     "listen: 127.0.0.1:http\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': expected HOST:PORT with a port in 1-65535, got "
		     "'127.0.0.1:http'");
	expect_error("node: a\n"
		     "listen: 8766\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': expected HOST:PORT with a port in 1-65535, got '8766'");
	expect_error("node: a\n"
		     "listen: \"[::1\"\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': expected HOST:PORT with a port in 1-65535, got '[::1'");

	/* Quoted numbers are numbers too, as long as they look like one. */
	CHECK_EQ_INT(load("node: a\n"
			  "hosts:\n"
			  "  a: { data_server_port: \"9001\", ssh_port: 65535 }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK_EQ_INT(cfg->self->data_server_port, 9001);
		CHECK_EQ_INT(cfg->listen_port, 9001);
		CHECK_EQ_INT(cfg->self->ssh_port, 65535);
	}
	config_free(cfg);
}

static void test_listen(void)
{
	static const struct {
		const char *listen;
		const char *host;
		int port;
	} ok[] = {
		{ "127.0.0.2:9000", "127.0.0.2", 9000 },
		{ "127.9.9.9", "127.9.9.9", 8700 },
		{ ":9001", "127.0.0.3", 9001 },
		{ "localhost:9002", "localhost", 9002 },
		{ "\"[::1]:9003\"", "::1", 9003 },
		{ "\"::1\"", "::1", 8700 },
		{ "\"[::ffff:127.0.0.1]\"", "::ffff:127.0.0.1", 8700 },
	};
	struct mfs_config *cfg = NULL;
	char text[512];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		snprintf(text, sizeof(text),
			 "node: a\n"
			 "listen: %s\n"
			 "hosts: { a: { address: 127.0.0.3, data_server_port: 8700 } }\n",
			 ok[i].listen);
		CHECK_EQ_INT(load(text, &cfg), 0);
		if (!cfg) {
			fprintf(stderr, "  %s\n", err);
			continue;
		}
		CHECK_EQ_STR(cfg->listen_host, ok[i].host);
		CHECK_EQ_INT(cfg->listen_port, ok[i].port);
		config_free(cfg);
	}

	/* Non-loopback without a token: the error names the key that chose the address. */
	expect_error("node: a\n"
		     "listen: 0.0.0.0:8766\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': cluster_token_file is required when listening on "
		     "0.0.0.0:8766 (not a loopback address)");
	expect_error("node: a\n"
		     "listen: \"[::]:8766\"\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'listen': cluster_token_file is required when listening on "
		     "[::]:8766 (not a loopback address)");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    ssh_host: 127.0.0.9\n"
		     "    tailscale_ip: 100.64.0.7\n"
		     "    data_server_port: 8800\n",
		     ":5: key 'hosts.a.tailscale_ip': cluster_token_file is required when "
		     "listening on 100.64.0.7:8800 (not a loopback address)");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: { address: train-1.example.com }\n",
		     ":3: key 'hosts.a.address': cluster_token_file is required when listening on "
		     "train-1.example.com:8766 (not a loopback address)");
	/* Another host's public address does not matter. */
	CHECK_EQ_INT(load("node: a\n"
			  "hosts:\n"
			  "  a: {}\n"
			  "  b: { address: 10.1.2.3 }\n",
			  &cfg),
		     0);
	config_free(cfg);
}

static void test_token(void)
{
	struct mfs_config *cfg = NULL;
	char text[1024], want[PATH_MAX + 64];

	write_file("token", "  \t tok-123\n\n");
	CHECK_EQ_INT(load("node: a\n"
			  "cluster_token_file: token\n"
			  "listen: 0.0.0.0:8766\n"
			  "hosts: { a: {} }\n",
			  &cfg),
		     0);
	if (cfg) {
		snprintf(want, sizeof(want), "%s/token", tmp());
		CHECK_EQ_STR(cfg->token_file, want);
		CHECK_EQ_STR(cfg->token, "tok-123");
		CHECK_EQ_STR(cfg->listen_host, "0.0.0.0");
	}
	config_free(cfg);

	snprintf(text, sizeof(text),
		 "node: a\n"
		 "hosts: { a: {} }\n"
		 "cluster_token_file: %s/no-such-token\n",
		 tmp());
	CHECK_EQ_INT(load(text, &cfg), -ENOENT);
	CHECK(cfg == NULL);
	snprintf(want, sizeof(want),
		 ":3: key 'cluster_token_file': cannot read '%s/no-such-token': No such file or "
		 "directory",
		 tmp());
	CHECK(err_is(want));

	write_file("empty-token", " \n\t\n");
	snprintf(want, sizeof(want),
		 ":2: key 'cluster_token_file': '%s/empty-token' is empty (expected the cluster "
		 "token)",
		 tmp());
	expect_error("node: a\n"
		     "cluster_token_file: empty-token\n"
		     "hosts: { a: {} }\n",
		     want);
	write_file("two-tokens", "one\ntwo\n");
	snprintf(want, sizeof(want),
		 ":2: key 'cluster_token_file': '%s/two-tokens' holds more than one word or line "
		 "(expected the cluster token)",
		 tmp());
	expect_error("node: a\n"
		     "cluster_token_file: two-tokens\n"
		     "hosts: { a: {} }\n",
		     want);
}

static void test_unknown_keys_warn_once(void)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_INT(load("node: a\n"
			  "p2p_voters: [a, b]\n"
			  "hosts:\n"
			  "  a:\n"
			  "    gpu: GH200\n"
			  "    memory_gb: 96\n"
			  "    storage_paths: { npz: /x, games: /g }\n"
			  "  b:\n"
			  "    gpu: H100\n"
			  "    storage_paths: { npz: /y }\n"
			  "auto_sync:\n"
			  "  gossip_interval_seconds: 15\n"
			  "  enabled: true\n"
			  "cache: { shards: 4 }\n"
			  "sync_routing:\n"
			  "  excluded_hosts: [{ name: b, reason: x }, { name: c, reason: y }]\n"
			  "p2p_voters_extra: 1\n",
			  &cfg),
		     0);
	CHECK_EQ_INT(warned("ignoring unknown key 'p2p_voters'"), 1);
	CHECK_EQ_INT(warned(":5: ignoring unknown key 'hosts.*.gpu'"), 1);
	CHECK_EQ_INT(warned("ignoring unknown key 'hosts.*.gpu'"), 1);
	CHECK_EQ_INT(warned(":6: ignoring unknown key 'hosts.*.memory_gb'"), 1);
	CHECK_EQ_INT(warned(":7: ignoring unknown key 'hosts.*.storage_paths.npz'"), 1);
	CHECK_EQ_INT(warned(":12: ignoring unknown key 'auto_sync.gossip_interval_seconds'"), 1);
	CHECK_EQ_INT(warned(":14: ignoring unknown key 'cache.shards'"), 1);
	CHECK_EQ_INT(warned(":16: ignoring unknown key 'sync_routing.excluded_hosts[].reason'"),
		     1);
	CHECK_EQ_INT(warned(":17: ignoring unknown key 'p2p_voters_extra'"), 1);
	CHECK_EQ_INT(warnings.n, 8);
	CHECK(contains(warnings.lines[0], "config "));
	CHECK(contains(warnings.lines[0], cfg_path));
	if (cfg) {
		CHECK_EQ_STR(cfg->hosts[0].storage_paths[0], "/g");
		CHECK_EQ_INT(cfg->sync_routing.n_excluded_hosts, 2);
	}
	config_free(cfg);
}

static void test_categories(void)
{
	struct mfs_config *cfg = NULL;
	char text[2048];
	size_t o;

	CHECK_EQ_INT(load("node: a\n"
			  "categories:\n"
			  "  games: data/games\n"
			  "  replays: var/replays/\n"
			  "hosts:\n"
			  "  a:\n"
			  "    root: /srv\n"
			  "    storage_paths: { training_data: /t, replays: /r/ }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK_EQ_INT(cfg->n_categories, 2);
		CHECK_EQ_STR(cfg->categories[1].name, "replays");
		CHECK_EQ_STR(cfg->categories[1].path, "var/replays");
		CHECK_EQ_INT(config_category_index(cfg, "training"), -ENOENT);
		CHECK_EQ_STR(cfg->self->storage_paths[1], "/r");
	}
	/* Without a training category, training_data is just an unknown key. */
	CHECK_EQ_INT(warned("ignoring unknown key 'hosts.*.storage_paths.training_data'"), 1);
	config_free(cfg);

	expect_error("node: a\n"
		     "categories:\n"
		     "  .hidden: x\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'categories..hidden': expected a simple name (no '/', ',' or spaces, "
		     "not starting with '.') as category name");
	expect_error("node: a\n"
		     "categories:\n"
		     "  \"..\": x\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'categories...': expected a simple name (no '/', ',' or spaces, not "
		     "starting with '.') as category name");
	expect_error("node: a\n"
		     "categories:\n"
		     "  a/b: x\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'categories.a/b': expected a simple name (no '/', ',' or spaces, not "
		     "starting with '.') as category name");
	expect_error("node: a\n"
		     "categories:\n"
		     "  games: /abs/games\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'categories.games': expected a path relative to each host's root (no "
		     "'..', not absolute), got '/abs/games'");
	expect_error("node: a\n"
		     "categories:\n"
		     "  games: data/../../etc\n"
		     "hosts: { a: {} }\n",
		     ":3: key 'categories.games': expected a path relative to each host's root (no "
		     "'..', not absolute), got 'data/../../etc'");
	expect_error("node: a\n"
		     "categories: {}\n"
		     "hosts: { a: {} }\n",
		     ":2: key 'categories': expected at least one category");

	o = snprintf(text, sizeof(text), "node: a\nhosts: { a: {} }\ncategories:\n");
	for (int i = 0; i <= CFG_MAX_CATEGORIES; i++)
		o += snprintf(text + o, sizeof(text) - o, "  c%d: d%d\n", i, i);
	expect_error(text, ":20: key 'categories.c16': at most 16 categories are supported");
}

static void test_storage_and_paths(void)
{
	struct mfs_config *cfg = NULL;
	char want[PATH_MAX + 64], home[PATH_MAX];
	const struct cfg_host *a, *b;

	snprintf(home, sizeof(home), "%s", getenv("HOME") ? getenv("HOME") : "/");
	CHECK_EQ_INT(load("node: a\n"
			  "state_dir: ./state//a/\n"
			  "hosts:\n"
			  "  a:\n"
			  "    root: srv/../cluster/./root/\n"
			  "    storage_paths:\n"
			  "      training: ~/training\n"
			  "      training_data: /ignored\n"
			  "      games: /\n"
			  "    shared_storage: [/nfs/x/, ~/shared]\n"
			  "  b:\n"
			  "    ringrift_path: ~/ringrift\n"
			  "    storage_paths: { training_data: /nfs/b/training }\n",
			  &cfg),
		     0);
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	a = cfg->self;
	b = config_find_host(cfg, "b");
	snprintf(want, sizeof(want), "%s/state/a", tmp());
	CHECK_EQ_STR(cfg->state_dir, want);
	snprintf(want, sizeof(want), "%s/cluster/root", tmp());
	CHECK_EQ_STR(a->root, want);
	/* This node's "~/" is its $HOME; `training` wins over `training_data`. */
	snprintf(want, sizeof(want), "%s/training", strcmp(home, "/") ? home : "");
	if (getenv("HOME"))
		CHECK_EQ_STR(a->storage_paths[2], want);
	CHECK_EQ_STR(a->storage_paths[0], "/");
	CHECK_EQ_INT(a->n_shared_storage, 2);
	CHECK_EQ_STR(a->shared_storage[0], "/nfs/x");
	CHECK(config_is_shared(a, "/nfs/x"));
	CHECK(config_is_shared(a, "/nfs/x/games"));
	CHECK(!config_is_shared(a, "/nfs/xy"));
	CHECK(!config_is_shared(a, "/nfs"));
	/* Another host's "~/" stays for that host to expand. */
	CHECK_EQ_STR(b->root, "~/ringrift");
	CHECK_EQ_STR(b->storage_paths[2], "/nfs/b/training");
	CHECK(!config_is_shared(b, "/nfs/x"));
	config_free(cfg);

	CHECK_EQ_INT(load("node: a\n"
			  "hosts:\n"
			  "  a: { root: / }\n",
			  &cfg),
		     0);
	if (cfg) {
		char *dir = config_category_dir(cfg, cfg->self, 0);

		CHECK_EQ_STR(dir, "/data/games");
		free(dir);
	}
	config_free(cfg);
}

static void test_transports(void)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_INT(load("node: a\n"
			  "hosts:\n"
			  "  a: { transports: [aria2, aria2, ssh] }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK_EQ_INT(cfg->self->transports, CFG_XPORT_ARIA2 | CFG_XPORT_SSH);
		CHECK_EQ_INT(cfg->self->transport_order[0], CFG_XPORT_ARIA2);
		CHECK_EQ_INT(cfg->self->transport_order[1], CFG_XPORT_SSH);
		CHECK_EQ_INT(cfg->self->transport_order[2], 0);
	}
	config_free(cfg);
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    transports:\n"
		     "      - http\n"
		     "      - ftp\n",
		     ":6: key 'hosts.a.transports': expected http, ssh or aria2, got 'ftp'");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: { transports: [] }\n",
		     ":3: key 'hosts.a.transports': expected a list of http, ssh, aria2, got an "
		     "empty list");
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: { transports: http }\n",
		     ":3: key 'hosts.a.transports': expected a list of http, ssh, aria2, got "
		     "'http'");
}

static void test_status_and_bools(void)
{
	static const char *const inactive[] = { "terminated", "offline", "retired", "archived",
						"setup", "RETIRED" };
	struct mfs_config *cfg = NULL;
	char text[256];

	for (size_t i = 0; i < sizeof(inactive) / sizeof(inactive[0]); i++) {
		snprintf(text, sizeof(text),
			 "node: a\n"
			 "hosts: { a: {}, b: { status: %s } }\n",
			 inactive[i]);
		CHECK_EQ_INT(load(text, &cfg), 0);
		if (cfg) {
			CHECK(!cfg->hosts[1].active);
			CHECK_EQ_STR(cfg->hosts[1].status, inactive[i]);
		}
		config_free(cfg);
	}
	CHECK_EQ_INT(load("node: a\n"
			  "auto_sync: { enabled: Off }\n"
			  "hosts: { a: { status: busy, is_ephemeral: yes }, b: { is_ephemeral: "
			  "TRUE } }\n",
			  &cfg),
		     0);
	if (cfg) {
		CHECK(cfg->hosts[0].active);
		CHECK(cfg->hosts[0].is_ephemeral && cfg->hosts[1].is_ephemeral);
		CHECK(!cfg->auto_sync.enabled);
	}
	config_free(cfg);
}

/* Empty and null values mean "not set", as they do for the cluster's PyYAML tools. */
static void test_null_values(void)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_INT(load("node: a\n"
			  "state_dir:\n"
			  "cache:\n"
			  "categories: ~\n"
			  "auto_sync:\n"
			  "  interval_seconds:\n"
			  "  strategy: null\n"
			  "sync_routing: { excluded_hosts: ~ }\n"
			  "hosts:\n"
			  "  a:\n"
			  "    address: \"\"\n"
			  "    tailscale_ip: ~\n"
			  "    ssh_host: 127.0.0.5\n"
			  "    role:\n"
			  "    status: ~\n"
			  "    storage_paths:\n"
			  "    transports:\n"
			  "  b:\n",
			  &cfg),
		     0);
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK_EQ_STR(cfg->state_dir, "/var/lib/meshfs/a");
	CHECK_EQ_INT(cfg->n_categories, 3);
	CHECK_EQ_INT(cfg->auto_sync.interval_seconds, 60);
	CHECK_EQ_STR(cfg->self->address, "127.0.0.5");
	CHECK(cfg->self->role == NULL);
	CHECK_EQ_STR(cfg->self->status, "ready");
	CHECK_EQ_INT(cfg->self->transports, CFG_XPORT_ALL);
	CHECK_EQ_INT(cfg->n_hosts, 2);
	config_free(cfg);
}

/* Merge keys and repeated keys behave as PyYAML reads them. */
static void test_merge_and_duplicates(void)
{
	struct mfs_config *cfg = NULL;
	const struct cfg_host *a, *b;

	CHECK_EQ_INT(load("node: a\n"
			  "defaults: &defaults\n"
			  "  ssh_user: ubuntu\n"
			  "  ssh_port: 2200\n"
			  "  role: gpu_selfplay\n"
			  "hosts:\n"
			  "  a:\n"
			  "    <<: *defaults\n"
			  "    ssh_port: 22\n"
			  "  b:\n"
			  "    <<: [{ role: first }, *defaults]\n"
			  "    role: mine\n"
			  "    role: really-mine\n"
			  "    gpu: x\n",
			  &cfg),
		     0);
	if (!cfg) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	a = config_find_host(cfg, "a");
	b = config_find_host(cfg, "b");
	CHECK_EQ_STR(a->ssh_user, "ubuntu");
	CHECK_EQ_INT(a->ssh_port, 22);
	CHECK_EQ_STR(a->role, "gpu_selfplay");
	CHECK_EQ_STR(b->ssh_user, "ubuntu");
	CHECK_EQ_INT(b->ssh_port, 2200);
	CHECK_EQ_STR(b->role, "really-mine");
	CHECK_EQ_INT(warned(":2: ignoring unknown key 'defaults'"), 1);
	CHECK_EQ_INT(warned(":12: key 'hosts.*.role' is given again on line 13; using the later "
			    "value"),
		     1);
	CHECK_EQ_INT(warned("ignoring unknown key 'hosts.*.gpu'"), 1);
	CHECK_EQ_INT(warnings.n, 3);
	config_free(cfg);

	expect_error("node: a\n"
		     "hosts:\n"
		     "  a:\n"
		     "    <<: 5\n",
		     ":4: key 'hosts.a': expected a map or a list of maps to merge ('<<'), "
		     "got '5'");
	/* A merge that reaches back to its own map must not loop forever. */
	expect_error("node: a\n"
		     "hosts:\n"
		     "  a: &self\n"
		     "    <<: *self\n",
		     ":3: key 'hosts.a': merge keys ('<<') nest more than 8 deep");
}

static void test_strategy_names(void)
{
	struct mfs_config *cfg = NULL;

	CHECK_EQ_STR(config_strategy_name(CFG_STRATEGY_AUTO), "auto");
	CHECK_EQ_STR(config_strategy_name(CFG_STRATEGY_HYBRID), "hybrid");
	CHECK_EQ_STR(config_strategy_name(CFG_STRATEGY_EPHEMERAL), "ephemeral");
	CHECK_EQ_STR(config_strategy_name(CFG_STRATEGY_BROADCAST), "broadcast");
	CHECK_EQ_STR(config_strategy_name((enum cfg_strategy)42), "unknown");
	CHECK_EQ_INT(load("node: a\n"
			  "auto_sync: { strategy: ephemeral }\n"
			  "hosts: { a: {} }\n",
			  &cfg),
		     0);
	if (cfg)
		CHECK_EQ_INT(cfg->auto_sync.strategy, CFG_STRATEGY_EPHEMERAL);
	config_free(cfg);
}

TEST_MAIN(TEST(test_example_hosts_file), TEST(test_defaults), TEST(test_full_file),
	  TEST(test_parse_size), TEST(test_cache), TEST(test_node_resolution),
	  TEST(test_node_not_in_hosts), TEST(test_syntax_errors), TEST(test_empty_and_missing),
	  TEST(test_wrong_types_and_values), TEST(test_ports), TEST(test_listen),
	  TEST(test_token), TEST(test_unknown_keys_warn_once), TEST(test_categories),
	  TEST(test_storage_and_paths), TEST(test_transports), TEST(test_status_and_bools),
	  TEST(test_null_values), TEST(test_merge_and_duplicates), TEST(test_strategy_names))
