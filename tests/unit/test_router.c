/*
 * test_router — the router's decisions on a loaded config: the strategy in effect, what a role
 * wants, who may hold replicas, the replica targets (count, eligibility, determinism, spread,
 * hosts down) and the broadcast order.
 */
#include "sync/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sync/config.h"
#include "tests/unit/testutil.h"

static char tmpdir[] = "/tmp/meshfs-test-router-XXXXXX";

static const char yaml[] =
	"node: %s\n"
	"state_dir: /tmp/unused\n"
	"auto_sync: { strategy: %s }\n"
	"sync_routing: { replication_target: 2, excluded_hosts: [mac] }\n"
	"hosts:\n"
	"  spot: { address: 127.0.0.2, root: /r, is_ephemeral: true, role: gpu_selfplay }\n"
	"  train: { address: 127.0.0.3, root: /r, role: gpu_training_primary }\n"
	"  p1: { address: 127.0.0.4, root: /r }\n"
	"  p2: { address: 127.0.0.5, root: /r, role: cpu_selfplay }\n"
	"  p3: { address: 127.0.0.6, root: /r, role: storage }\n"
	"  mac: { address: 127.0.0.7, root: /r }\n"
	"  gone: { address: 127.0.0.8, root: /r, status: terminated }\n"
	"  spot2: { address: 127.0.0.9, root: /r, is_ephemeral: true }\n"
	"  nfs1: { address: 127.0.0.10, root: /nfs/x, shared_storage: [/nfs] }\n"
	"  nfs2: { address: 127.0.0.11, root: /nfs/x, shared_storage: [/nfs] }\n";

static struct mfs_config *load(const char *node, const char *strategy)
{
	char path[256], err[512];
	struct mfs_config *cfg = NULL;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.yaml", tmpdir, node);
	f = fopen(path, "w");
	if (!f)
		return NULL;
	fprintf(f, yaml, node, strategy);
	fclose(f);
	if (config_load(path, &cfg, err, sizeof(err)) < 0)
		fprintf(stderr, "config: %s\n", err);
	unlink(path);
	return cfg;
}

static const struct cfg_host *host(const struct mfs_config *cfg, const char *name)
{
	return config_find_host(cfg, name);
}

static int idx(const struct mfs_config *cfg, const char *name)
{
	return (int)(host(cfg, name) - cfg->hosts);
}

static void test_strategy(void)
{
	struct mfs_config *cfg = load("p1", "auto");

	if (!cfg) {
		CHECK(0);
		return;
	}
	CHECK_EQ_INT(router_strategy(cfg, host(cfg, "spot")), CFG_STRATEGY_EPHEMERAL);
	CHECK_EQ_INT(router_strategy(cfg, host(cfg, "train")), CFG_STRATEGY_BROADCAST);
	CHECK_EQ_INT(router_strategy(cfg, host(cfg, "p1")), CFG_STRATEGY_HYBRID);
	config_free(cfg);
	/* This node's own setting counts for itself only. */
	cfg = load("p1", "broadcast");
	if (!cfg)
		return;
	CHECK_EQ_INT(router_strategy(cfg, host(cfg, "p1")), CFG_STRATEGY_BROADCAST);
	CHECK_EQ_INT(router_strategy(cfg, host(cfg, "p2")), CFG_STRATEGY_HYBRID);
	config_free(cfg);
	CHECK(router_publishes_models("coordinator"));
	CHECK(!router_publishes_models("gpu_training"));
	CHECK(!router_publishes_models(NULL));
}

static void test_role_wants(void)
{
	CHECK_EQ_INT(router_role_wants("gpu_training", "training"), ROUTER_WANT_ALL);
	CHECK_EQ_INT(router_role_wants("gpu_training", "games"), ROUTER_WANT_ALL);
	CHECK_EQ_INT(router_role_wants("gpu_training", "models"), ROUTER_WANT_NEWEST);
	CHECK_EQ_INT(router_role_wants("gpu_selfplay", "models"), ROUTER_WANT_NEWEST);
	CHECK_EQ_INT(router_role_wants("gpu_selfplay", "games"), ROUTER_WANT_NONE);
	CHECK_EQ_INT(router_role_wants("storage", "games"), ROUTER_WANT_ALL);
	CHECK_EQ_INT(router_role_wants(NULL, "models"), ROUTER_WANT_NONE);
	CHECK_EQ_INT(router_role_wants("coordinator", "models"), ROUTER_WANT_NONE);
}

static void test_can_receive(void)
{
	struct mfs_config *cfg = load("p1", "auto");
	const struct cfg_host *spot;

	if (!cfg) {
		CHECK(0);
		return;
	}
	spot = host(cfg, "spot");
	CHECK(router_can_receive(cfg, NULL, host(cfg, "p1"), spot, 0));
	CHECK(router_can_receive(cfg, NULL, host(cfg, "train"), spot, 0));
	CHECK(!router_can_receive(cfg, NULL, spot, spot, 0));			/* itself */
	CHECK(!router_can_receive(cfg, NULL, host(cfg, "mac"), spot, 0));	/* excluded */
	CHECK(!router_can_receive(cfg, NULL, host(cfg, "gone"), spot, 0));	/* inactive */
	CHECK(!router_can_receive(cfg, NULL, host(cfg, "spot2"), spot, 0));	/* ephemeral */
	/* Hosts sharing the producer's storage hold nothing of it; others do. */
	CHECK(!router_can_receive(cfg, NULL, host(cfg, "nfs2"), host(cfg, "nfs1"), 0));
	CHECK(router_can_receive(cfg, NULL, host(cfg, "p1"), host(cfg, "nfs1"), 0));
	config_free(cfg);
}

static void test_replica_targets(void)
{
	struct mfs_config *cfg = load("p1", "auto");
	const struct cfg_host *spot;
	uint64_t bad, spread = 0;

	if (!cfg) {
		CHECK(0);
		return;
	}
	spot = host(cfg, "spot");
	bad = (1ull << idx(cfg, "spot")) | (1ull << idx(cfg, "mac")) |
	      (1ull << idx(cfg, "gone")) | (1ull << idx(cfg, "spot2"));
	for (int i = 0; i < 200; i++) {
		char path[64];
		struct hash128 h = { .hi = (uint64_t)i * 7919, .lo = 42 };
		uint64_t t, again, without;
		int first;

		snprintf(path, sizeof(path), "games/g%d.db", i);
		t = router_replica_targets(cfg, NULL, spot, 0, path, &h, 0);
		CHECK_EQ_INT(__builtin_popcountll(t), 2);
		CHECK((t & bad) == 0);
		again = router_replica_targets(cfg, NULL, spot, 0, path, &h, 0);
		CHECK(t == again);
		spread |= t;
		/* A chosen host that is down: the next in line takes its place. */
		first = __builtin_ctzll(t);
		without = router_replica_targets(cfg, NULL, spot, 0, path, &h, 1ull << first);
		CHECK_EQ_INT(__builtin_popcountll(without), 2);
		CHECK(!(without & (1ull << first)));
		CHECK((without & t) == (t & ~(1ull << first)));
	}
	/* Over many files every eligible host takes some. */
	CHECK((spread & ~bad) == spread);
	CHECK_EQ_INT(__builtin_popcountll(spread), 6); /* train p1 p2 p3 nfs1 nfs2 */
	config_free(cfg);
}

static void test_broadcast_rank(void)
{
	struct mfs_config *cfg = load("p1", "auto");
	const struct cfg_host *train;
	struct hash128 h = { 1, 2 };
	bool seen[16] = { false };
	int receivers = 0;

	if (!cfg) {
		CHECK(0);
		return;
	}
	train = host(cfg, "train");
	/* The receivers' ranks are 0..n-1, each once; the producer and excluded or inactive
	 * hosts have none. */
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		int r = router_broadcast_rank(cfg, train, "m.pth", &h, 0, &cfg->hosts[i]);

		if (r < 0)
			continue;
		CHECK(r < 16 && !seen[r]);
		if (r < 16)
			seen[r] = true;
		receivers++;
	}
	CHECK_EQ_INT(receivers, 7); /* spot p1 p2 p3 spot2 nfs1 nfs2 */
	for (int r = 0; r < receivers; r++)
		CHECK(seen[r]);
	CHECK_EQ_INT(router_broadcast_rank(cfg, train, "m.pth", &h, 0, train), -1);
	CHECK_EQ_INT(router_broadcast_rank(cfg, train, "m.pth", &h, 0, host(cfg, "mac")), -1);
	config_free(cfg);
}

__attribute__((constructor)) static void setup(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		exit(2);
	}
}

__attribute__((destructor)) static void teardown(void)
{
	rmdir(tmpdir);
}

TEST_MAIN(TEST(test_strategy), TEST(test_role_wants), TEST(test_can_receive),
	  TEST(test_replica_targets), TEST(test_broadcast_rank))
