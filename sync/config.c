/*
 * config — the meshfs configuration schema: what the keys of the YAML file mean, loaded into
 * an immutable struct mfs_config.
 *
 * config_yaml.c loads the file and reads it back as the cluster's PyYAML tools see it (merge
 * keys applied, a key given twice keeping its later value, an empty or null value meaning
 * "not set"), with errors that name file, line and key. This file drives the walk by what
 * meshfs knows: the top-level keys, then categories, cache, auto_sync, sync_routing and
 * hosts, in the order their dependencies need (storage_paths names categories; which host is
 * this node decides how its paths are read). A key it does not know is warned about once per
 * key path and its value is never looked into. That is what lets an existing
 * distributed_hosts.yaml, full of keys for other tools, load unchanged.
 *
 * Paths: a relative path in the file is taken relative to the directory of the config file,
 * so the file means the same whatever the daemon's working directory is. A leading "~/" is
 * $HOME for the paths this node itself opens (cluster_token_file, state_dir, ssh_key, and its
 * own root, storage_paths and shared_storage); another host's "~/" paths are kept as written,
 * since only that host (or its ssh login shell) knows its home.
 */
#include "sync/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#include "sync/config_yaml.h"
#include "sync/log.h"
#include "sync/util.h"

#define NODE_ID_FILE "/etc/meshfs/node-id"
#define DEFAULT_STATE_ROOT "/var/lib/meshfs"
/* How much of the known host list a "node not found" error shows. */
#define HOST_LIST_MAX 200

struct loader {
	struct cfgy y;		/* the document, error buffer and warned set */
	struct mfs_config *cfg;
	const char *node_source;	/* where cfg->node came from, for messages */
	bool node_from_key;
	/* The key and value that gave this node's own address, for the token error. */
	const char *self_addr_key;
	const yaml_node_t *self_addr_node;
};

static const char *const strategy_names[] = {
	[CFG_STRATEGY_AUTO] = "auto",
	[CFG_STRATEGY_HYBRID] = "hybrid",
	[CFG_STRATEGY_EPHEMERAL] = "ephemeral",
	[CFG_STRATEGY_BROADCAST] = "broadcast",
};

static const char *const inactive_status[] = {
	"terminated", "offline", "retired", "archived", "setup",
};

static const struct {
	const char *name;
	unsigned bit;
} transport_names[] = {
	{ "http", CFG_XPORT_HTTP },
	{ "ssh", CFG_XPORT_SSH },
	{ "aria2", CFG_XPORT_ARIA2 },
};

static const struct {
	const char *name;
	const char *path;
} default_categories[] = {
	{ "games", "data/games" },
	{ "models", "models" },
	{ "training", "data/training" },
};

/* A name usable as one path component: not empty, no '/', ',' or control bytes, no leading '.'. */
static bool is_simple_name(const char *s)
{
	if (!*s || *s == '.')
		return false;
	for (; *s; s++)
		if (*s == '/' || *s == ',' || (unsigned char)*s <= 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* ---- sections ---------------------------------------------------------------------------- */

static int load_categories(struct loader *ld, yaml_node_t *node)
{
	static const struct cfgy_sect s = { "categories", "categories" };
	struct mfs_config *cfg = ld->cfg;
	struct cfgy_kvlist l;
	char key[CFGY_KEY_MAX];
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map of category names to paths", &l);
	if (ret < 0 || cfgy_is_null(node))
		goto out;
	if (l.n == 0) {
		ret = cfgy_fail(&ld->y, node, s.err, "expected at least one category");
		goto out;
	}
	for (size_t i = 0; i < cfg->n_categories; i++) {
		free(cfg->categories[i].name);
		free(cfg->categories[i].path);
	}
	memset(cfg->categories, 0, sizeof(cfg->categories));
	cfg->n_categories = 0;
	for (size_t i = 0; i < l.n; i++) {
		struct cfg_category *c = &cfg->categories[cfg->n_categories];
		const char *path;
		char *copy = NULL;

		cfgy_keypath(key, sizeof(key), s.err, l.v[i].key);
		if (cfg->n_categories == CFG_MAX_CATEGORIES) {
			ret = cfgy_fail(&ld->y, l.v[i].key_node, key,
					"at most %d categories are supported", CFG_MAX_CATEGORIES);
			goto out;
		}
		if (!is_simple_name(l.v[i].key)) {
			ret = cfgy_fail(&ld->y, l.v[i].key_node, key,
					"expected a simple name (no '/', ',' or spaces, not "
					"starting with '.') as category name");
			goto out;
		}
		ret = cfgy_get_scalar(&ld->y, l.v[i].val, key,
				      "a path relative to each host's root", &path);
		if (ret < 0)
			goto out;
		if (path) {
			copy = strdup(path);
			if (!copy) {
				ret = -ENOMEM;
				goto out;
			}
			/* "data/games/" means data/games. */
			for (size_t n = strlen(copy); n > 1 && copy[n - 1] == '/'; n--)
				copy[n - 1] = '\0';
		}
		if (!copy || !path_is_clean_relative(copy)) {
			char got[96];

			free(copy);
			ret = cfgy_fail(&ld->y, l.v[i].val, key,
					"expected a path relative to each host's root (no '..', "
					"not absolute), got %s",
					cfgy_describe(l.v[i].val, got, sizeof(got)));
			goto out;
		}
		c->name = strdup(l.v[i].key);
		c->path = copy;
		cfg->n_categories++;
		if (!c->name) {
			ret = -ENOMEM;
			goto out;
		}
	}
out:
	cfgy_kvlist_free(&l);
	return ret;
}

/* min_free: a size ("20G") or a percentage of the cache's file system ("10%"). */
static int get_min_free(struct loader *ld, const yaml_node_t *node, const char *key)
{
	static const char what[] = "a size like 20G or a percentage like 10%";
	struct mfs_config *cfg = ld->cfg;
	const char *s;
	char got[96], num[64];
	size_t len;
	double pct;
	int ret;

	ret = cfgy_get_scalar(&ld->y, node, key, what, &s);
	if (ret < 0 || !s)
		goto out;
	len = strlen(s);
	if (len > 1 && s[len - 1] == '%' && len < sizeof(num)) {
		memcpy(num, s, len - 1);
		num[len - 1] = '\0';
		if (cfgy_parse_number(num, &pct) < 0 || pct > 100)
			goto bad;
		cfg->cache_min_free_pct = pct;
		cfg->cache_min_free_bytes = 0;
		goto out;
	}
	if (config_parse_size(s, &cfg->cache_min_free_bytes) < 0)
		goto bad;
	cfg->cache_min_free_pct = 0;
	goto out;
bad:
	ret = cfgy_fail(&ld->y, node, key, "expected %s, got %s", what,
			cfgy_describe(node, got, sizeof(got)));
out:
	return ret;
}

static int load_cache(struct loader *ld, yaml_node_t *node)
{
	static const struct cfgy_sect s = { "cache", "cache" };
	struct cfgy_kvlist l;
	char key[CFGY_KEY_MAX], got[96];
	const char *v;
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map (max_size, min_free)", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct cfgy_kv *kv = &l.v[i];

		cfgy_keypath(key, sizeof(key), s.err, kv->key);
		if (strcmp(kv->key, "max_size") == 0) {
			ret = cfgy_get_scalar(&ld->y, kv->val, key, "a size like 200G", &v);
			if (ret == 0 && v && config_parse_size(v, &ld->cfg->cache_max_size) < 0)
				ret = cfgy_fail(&ld->y, kv->val, key,
						"expected a size like 200G, got %s",
						cfgy_describe(kv->val, got, sizeof(got)));
		} else if (strcmp(kv->key, "min_free") == 0) {
			ret = get_min_free(ld, kv->val, key);
		} else {
			ret = cfgy_warn_unknown(&ld->y, kv, s.warn);
		}
	}
	cfgy_kvlist_free(&l);
	return ret;
}

static int load_strategy(struct loader *ld, const yaml_node_t *node, const char *key)
{
	const char *s;
	char got[96];
	int ret;

	ret = cfgy_get_scalar(&ld->y, node, key, "auto, hybrid, ephemeral or broadcast", &s);
	if (ret < 0 || !s)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(strategy_names); i++) {
		if (strcmp(s, strategy_names[i]) == 0) {
			ld->cfg->auto_sync.strategy = (enum cfg_strategy)i;
			goto out;
		}
	}
	ret = cfgy_fail(&ld->y, node, key, "expected auto, hybrid, ephemeral or broadcast, got %s",
			cfgy_describe(node, got, sizeof(got)));
out:
	return ret;
}

static int load_bw_overrides(struct loader *ld, yaml_node_t *node, const char *key)
{
	const struct cfgy_sect s = { key, key };
	struct mfs_config *cfg = ld->cfg;
	struct cfgy_kvlist l;
	char sub[CFGY_KEY_MAX];
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map of host name patterns to megabits per second",
			     &l);
	if (ret < 0 || l.n == 0)
		goto out;
	cfg->auto_sync.host_bandwidth_overrides = calloc(l.n, sizeof(struct cfg_bw_override));
	if (!cfg->auto_sync.host_bandwidth_overrides) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		size_t n = cfg->auto_sync.n_host_bandwidth_overrides;
		struct cfg_bw_override *o = &cfg->auto_sync.host_bandwidth_overrides[n];

		cfgy_keypath(sub, sizeof(sub), key, l.v[i].key);
		if (cfgy_is_null(l.v[i].val))
			continue;
		ret = cfgy_get_number(&ld->y, l.v[i].val, sub, &o->mbps);
		if (ret < 0)
			goto out;
		o->pattern = strdup(l.v[i].key);
		if (!o->pattern) {
			ret = -ENOMEM;
			goto out;
		}
		cfg->auto_sync.n_host_bandwidth_overrides++;
	}
out:
	cfgy_kvlist_free(&l);
	return ret;
}

static int load_auto_sync(struct loader *ld, yaml_node_t *node)
{
#define AS(m) offsetof(struct mfs_config, auto_sync.m)
	static const struct cfgy_field fields[] = {
		{ "enabled", CFGY_BOOL, AS(enabled) },
		{ "strategy", CFGY_SPECIAL, 0 },
		{ "interval_seconds", CFGY_INT_POS, AS(interval_seconds) },
		{ "bandwidth_limit_mbps", CFGY_NUM, AS(bandwidth_limit_mbps) },
		{ "host_bandwidth_overrides", CFGY_SPECIAL, 0 },
		{ "read_deadline_seconds", CFGY_INT_POS, AS(read_deadline_seconds) },
		{ "circuit_failure_threshold", CFGY_INT_POS, AS(circuit_failure_threshold) },
		{ "circuit_recovery_seconds", CFGY_INT_POS, AS(circuit_recovery_seconds) },
		{ "shutdown_flush_seconds", CFGY_INT_NONNEG, AS(shutdown_flush_seconds) },
	};
#undef AS
	static const struct cfgy_sect s = { "auto_sync", "auto_sync" };
	struct cfgy_kvlist l;
	char key[CFGY_KEY_MAX];
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct cfgy_field *f =
		    cfgy_find_field(fields, ARRAY_SIZE(fields), l.v[i].key);

		cfgy_keypath(key, sizeof(key), s.err, l.v[i].key);
		if (!f)
			ret = cfgy_warn_unknown(&ld->y, &l.v[i], s.warn);
		else if (strcmp(f->name, "strategy") == 0)
			ret = load_strategy(ld, l.v[i].val, key);
		else if (strcmp(f->name, "host_bandwidth_overrides") == 0)
			ret = load_bw_overrides(ld, l.v[i].val, key);
		else
			ret = cfgy_set_field(&ld->y, ld->cfg, f, l.v[i].val, key);
	}
	cfgy_kvlist_free(&l);
	return ret;
}

/* One excluded_hosts entry: a host name, or a map whose `name` is the host name. */
static int load_excluded_host(struct loader *ld, yaml_node_t *item, const char *key, char **out)
{
	static const struct cfgy_sect s = { "sync_routing.excluded_hosts[]",
					    "sync_routing.excluded_hosts[]" };
	static const char what[] = "a host name or a map with 'name'";
	struct cfgy_kvlist l = { 0 };
	const yaml_node_t *name_node = NULL;
	const char *name = NULL;
	char got[96];
	int ret = 0;

	if (item && item->type == YAML_MAPPING_NODE) {
		ret = cfgy_map_pairs(&ld->y, item, &s, what, &l);
		for (size_t i = 0; ret == 0 && i < l.n; i++) {
			if (strcmp(l.v[i].key, "name") == 0)
				name_node = l.v[i].val;
			else
				ret = cfgy_warn_unknown(&ld->y, &l.v[i], s.warn);
		}
		if (ret < 0)
			goto out;
		if (!name_node) {
			ret = cfgy_fail(&ld->y, item, key, "expected %s, got a map without 'name'",
					what);
			goto out;
		}
	} else {
		name_node = item;
	}
	ret = cfgy_get_scalar(&ld->y, name_node, key, what, &name);
	if (ret < 0)
		goto out;
	if (!name || !*name) {
		ret = cfgy_fail(&ld->y, name_node, key, "expected %s, got %s", what,
				cfgy_describe(name_node, got, sizeof(got)));
		goto out;
	}
	*out = strdup(name);
	if (!*out)
		ret = -ENOMEM;
out:
	cfgy_kvlist_free(&l);
	return ret;
}

static int load_excluded_hosts(struct loader *ld, yaml_node_t *node, const char *key)
{
	struct mfs_config *cfg = ld->cfg;
	size_t n;
	int ret;

	ret = cfgy_get_seq(&ld->y, node, key, "a list of host names", &n);
	if (ret < 0 || n == 0)
		goto out;
	cfg->sync_routing.excluded_hosts = calloc(n, sizeof(char *));
	if (!cfg->sync_routing.excluded_hosts) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *item = cfgy_node(&ld->y, node->data.sequence.items.start[i]);

		ret = load_excluded_host(ld, item, key,
					 &cfg->sync_routing.excluded_hosts[i]);
		if (ret < 0)
			goto out;
		cfg->sync_routing.n_excluded_hosts++;
	}
out:
	return ret;
}

static int load_sync_routing(struct loader *ld, yaml_node_t *node)
{
	static const struct cfgy_sect s = { "sync_routing", "sync_routing" };
	static const struct cfgy_field f = {
		"replication_target", CFGY_INT_NONNEG,
		offsetof(struct mfs_config, sync_routing.replication_target)
	};
	struct cfgy_kvlist l;
	char key[CFGY_KEY_MAX];
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		cfgy_keypath(key, sizeof(key), s.err, l.v[i].key);
		if (strcmp(l.v[i].key, "excluded_hosts") == 0)
			ret = load_excluded_hosts(ld, l.v[i].val, key);
		else if (strcmp(l.v[i].key, f.name) == 0)
			ret = cfgy_set_field(&ld->y, ld->cfg, &f, l.v[i].val, key);
		else
			ret = cfgy_warn_unknown(&ld->y, &l.v[i], s.warn);
	}
	cfgy_kvlist_free(&l);
	return ret;
}

/* ---- hosts ------------------------------------------------------------------------------- */

static int load_storage_paths(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			      const struct cfgy_sect *hs, bool self)
{
	char err_prefix[CFGY_KEY_MAX], warn_prefix[CFGY_KEY_MAX], key[CFGY_KEY_MAX];
	struct mfs_config *cfg = ld->cfg;
	const struct cfgy_sect s = {
		cfgy_keypath(err_prefix, sizeof(err_prefix), hs->err, "storage_paths"),
		cfgy_keypath(warn_prefix, sizeof(warn_prefix), hs->warn, "storage_paths")
	};
	int training = config_category_index(cfg, "training");
	const struct cfgy_kv *alias = NULL;
	struct cfgy_kvlist l;
	int ret;

	ret = cfgy_map_pairs(&ld->y, node, &s, "a map of category names to paths", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		int idx = config_category_index(cfg, l.v[i].key);

		cfgy_keypath(key, sizeof(key), s.err, l.v[i].key);
		if (idx >= 0)
			ret = cfgy_get_path(&ld->y, l.v[i].val, key, self, &h->storage_paths[idx]);
		else if (training >= 0 && strcmp(l.v[i].key, "training_data") == 0)
			alias = &l.v[i];
		else
			ret = cfgy_warn_unknown(&ld->y, &l.v[i], s.warn);
	}
	/* The cluster's own name for the training category; `training` itself wins. */
	if (ret == 0 && alias && !h->storage_paths[training])
		ret = cfgy_get_path(&ld->y, alias->val,
				    cfgy_keypath(key, sizeof(key), s.err, alias->key), self,
				    &h->storage_paths[training]);
	cfgy_kvlist_free(&l);
	return ret;
}

static int load_shared_storage(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			       const char *key, bool self)
{
	size_t n;
	int ret;

	ret = cfgy_get_seq(&ld->y, node, key, "a list of paths", &n);
	if (ret < 0 || n == 0)
		goto out;
	h->shared_storage = calloc(n, sizeof(char *));
	if (!h->shared_storage) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *item = cfgy_node(&ld->y, node->data.sequence.items.start[i]);
		char *path = NULL;

		ret = cfgy_get_path(&ld->y, item, key, self, &path);
		if (ret < 0)
			goto out;
		if (path)
			h->shared_storage[h->n_shared_storage++] = path;
	}
out:
	return ret;
}

static int load_transports(struct loader *ld, struct cfg_host *h, yaml_node_t *node,
			   const char *key)
{
	static const char what[] = "a list of http, ssh, aria2";
	unsigned bits = 0;
	size_t n = 0, items;
	char got[96];
	int ret = 0;

	if (cfgy_is_null(node))
		goto out;
	ret = cfgy_get_seq(&ld->y, node, key, what, &items);
	if (ret < 0)
		goto out;
	if (items == 0) {
		ret = cfgy_fail(&ld->y, node, key, "expected %s, got an empty list", what);
		goto out;
	}
	memset(h->transport_order, 0, sizeof(h->transport_order));
	for (yaml_node_item_t *it = node->data.sequence.items.start;
	     it < node->data.sequence.items.top; it++) {
		yaml_node_t *item = cfgy_node(&ld->y, *it);
		unsigned bit = 0;
		const char *s;

		ret = cfgy_get_scalar(&ld->y, item, key, what, &s);
		if (ret < 0)
			goto out;
		for (size_t i = 0; s && i < ARRAY_SIZE(transport_names); i++)
			if (strcmp(s, transport_names[i].name) == 0)
				bit = transport_names[i].bit;
		if (!bit) {
			ret = cfgy_fail(&ld->y, item, key, "expected http, ssh or aria2, got %s",
					cfgy_describe(item, got, sizeof(got)));
			goto out;
		}
		if (bits & bit)
			continue;
		bits |= bit;
		h->transport_order[n++] = (uint8_t)bit;
	}
	h->transports = bits;
out:
	return ret;
}

static int load_host(struct loader *ld, const struct cfgy_kv *entry, struct cfg_host *h)
{
#define H(m) offsetof(struct cfg_host, m)
	static const struct cfgy_field fields[] = {
		{ "address", CFGY_SPECIAL, 0 },
		{ "tailscale_ip", CFGY_SPECIAL, 0 },
		{ "ssh_host", CFGY_SPECIAL, 0 },
		{ "data_server_port", CFGY_PORT, H(data_server_port) },
		{ "root", CFGY_SPECIAL, 0 },
		{ "ringrift_path", CFGY_SPECIAL, 0 },
		{ "storage_paths", CFGY_SPECIAL, 0 },
		{ "shared_storage", CFGY_SPECIAL, 0 },
		{ "role", CFGY_STR, H(role) },
		{ "status", CFGY_STR, H(status) },
		{ "is_ephemeral", CFGY_BOOL, H(is_ephemeral) },
		{ "ssh_user", CFGY_STR, H(ssh_user) },
		{ "ssh_port", CFGY_PORT, H(ssh_port) },
		{ "ssh_key", CFGY_SPECIAL, 0 },
		{ "bandwidth_mbps", CFGY_NUM, H(bandwidth_mbps) },
		{ "transports", CFGY_SPECIAL, 0 },
	};
#undef H
	/* The compatible spellings, most preferred first. */
	static const char *const addr_keys[] = { "address", "tailscale_ip", "ssh_host" };
	static const char *const root_keys[] = { "root", "ringrift_path" };
	const yaml_node_t *addr_nodes[ARRAY_SIZE(addr_keys)] = { 0 };
	const yaml_node_t *root_nodes[ARRAY_SIZE(root_keys)] = { 0 };
	char err_prefix[CFGY_KEY_MAX], key[CFGY_KEY_MAX];
	const struct cfgy_sect s = { cfgy_keypath(err_prefix, sizeof(err_prefix), "hosts", h->name),
				     "hosts.*" };
	bool self = strcmp(h->name, ld->cfg->node) == 0;
	struct cfgy_kvlist l = { 0 };
	int ret = 0;

	ret = cfgy_map_pairs(&ld->y, entry->val, &s, "a map of host settings", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		const struct cfgy_kv *kv = &l.v[i];
		const struct cfgy_field *f = cfgy_find_field(fields, ARRAY_SIZE(fields), kv->key);

		cfgy_keypath(key, sizeof(key), s.err, kv->key);
		if (!f) {
			ret = cfgy_warn_unknown(&ld->y, kv, s.warn);
		} else if (f->type != CFGY_SPECIAL) {
			ret = cfgy_set_field(&ld->y, h, f, kv->val, key);
		} else if (strcmp(f->name, "storage_paths") == 0) {
			ret = load_storage_paths(ld, h, kv->val, &s, self);
		} else if (strcmp(f->name, "shared_storage") == 0) {
			ret = load_shared_storage(ld, h, kv->val, key, self);
		} else if (strcmp(f->name, "transports") == 0) {
			ret = load_transports(ld, h, kv->val, key);
		} else if (strcmp(f->name, "ssh_key") == 0) {
			ret = cfgy_get_path(&ld->y, kv->val, key, true, &h->ssh_key);
		} else {
			for (size_t j = 0; j < ARRAY_SIZE(addr_keys); j++)
				if (strcmp(kv->key, addr_keys[j]) == 0)
					addr_nodes[j] = kv->val;
			for (size_t j = 0; j < ARRAY_SIZE(root_keys); j++)
				if (strcmp(kv->key, root_keys[j]) == 0)
					root_nodes[j] = kv->val;
		}
	}
	if (ret < 0)
		goto out;
	for (size_t j = 0; j < ARRAY_SIZE(addr_keys) && !h->address; j++) {
		ret = cfgy_get_string(&ld->y, addr_nodes[j],
				      cfgy_keypath(key, sizeof(key), s.err, addr_keys[j]),
				      &h->address);
		if (ret < 0)
			goto out;
		if (h->address && self) {
			ld->self_addr_key = addr_keys[j];
			ld->self_addr_node = addr_nodes[j];
		}
	}
	for (size_t j = 0; j < ARRAY_SIZE(root_keys) && !h->root; j++) {
		ret = cfgy_get_path(&ld->y, root_nodes[j],
				    cfgy_keypath(key, sizeof(key), s.err, root_keys[j]), self,
				    &h->root);
		if (ret < 0)
			goto out;
	}
	h->active = true;
	for (size_t j = 0; j < ARRAY_SIZE(inactive_status); j++)
		if (strcasecmp(h->status, inactive_status[j]) == 0)
			h->active = false;
out:
	cfgy_kvlist_free(&l);
	return ret;
}

static int init_host(struct cfg_host *h, const struct cfgy_kv *entry)
{
	static const uint8_t order[] = { CFG_XPORT_HTTP, CFG_XPORT_SSH, CFG_XPORT_ARIA2 };
	int ret = 0;

	h->name = strdup(entry->key);
	h->status = strdup("ready");
	if (!h->name || !h->status)
		ret = -ENOMEM;
	h->line = (int)cfgy_line(entry->key_node);
	h->data_server_port = CFG_DEFAULT_PORT;
	h->ssh_port = 22;
	h->active = true;
	h->transports = CFG_XPORT_ALL;
	memcpy(h->transport_order, order, sizeof(order));
	return ret;
}

/* "a, b, c, ... (12 in all)": the host names for an error message, shortened if many. */
static void host_list(const struct cfgy_kvlist *hosts, char *buf, size_t len)
{
	size_t o = 0, i;

	buf[0] = '\0';
	for (i = 0; i < hosts->n; i++) {
		size_t need = strlen(hosts->v[i].key) + 2;

		if (o + need > HOST_LIST_MAX || o + need >= len)
			break;
		o += snprintf(buf + o, len - o, "%s%s", i ? ", " : "", hosts->v[i].key);
	}
	if (i < hosts->n)
		snprintf(buf + o, len - o, "%s... (%zu in all)", i ? ", " : "", hosts->n);
}

/*
 * Sets cfg->node: the `node` key, else $MESHFS_NODE, else NODE_ID_FILE, else the host name
 * (or, when only its short form is a host, the part before the first '.').
 */
static int resolve_node(struct loader *ld, const yaml_node_t *node_val,
			const struct cfgy_kvlist *hosts)
{
	struct mfs_config *cfg = ld->cfg;
	char hostname[HOST_NAME_MAX + 1], *file = NULL, *dot;
	const char *name = NULL, *env;
	int ret;

	ret = cfgy_get_scalar(&ld->y, node_val, "node", "a host name", &name);
	if (ret < 0)
		goto out;
	if (name && *name) {
		ld->node_source = "key 'node'";
		ld->node_from_key = true;
		goto found;
	}
	env = getenv("MESHFS_NODE");
	if (env && *env) {
		name = env;
		ld->node_source = "$MESHFS_NODE";
		goto found;
	}
	ret = read_small_file(NODE_ID_FILE, &file);
	if (ret == 0 && *str_strip(file)) {
		name = file;
		ld->node_source = NODE_ID_FILE;
		goto found;
	}
	if (ret < 0 && ret != -ENOENT)
		log_msg(LOG_WARNING, "config: cannot read %s: %s; using the host name",
			NODE_ID_FILE, strerror(-ret));
	ret = 0;
	if (gethostname(hostname, sizeof(hostname)) < 0 || !hostname[0]) {
		ret = cfgy_fail(&ld->y, NULL, NULL,
				"cannot tell which host this node is: set 'node', $MESHFS_NODE "
				"or %s",
				NODE_ID_FILE);
		goto out;
	}
	hostname[sizeof(hostname) - 1] = '\0';
	dot = strchr(hostname, '.');
	if (dot && !cfgy_kv_find(hosts, hostname)) {
		*dot = '\0';
		if (!cfgy_kv_find(hosts, hostname))
			*dot = '.';
	}
	name = hostname;
	ld->node_source = "the host name";
found:
	cfg->node = strdup(name);
	if (!cfg->node)
		ret = -ENOMEM;
out:
	free(file);
	return ret;
}

/* @key is the `hosts` key itself, which an error about the whole map points at. */
static int load_hosts(struct loader *ld, const yaml_node_t *key, yaml_node_t *node,
		      const yaml_node_t *node_val)
{
	static const struct cfgy_sect s = { "hosts", "hosts" };
	struct mfs_config *cfg = ld->cfg;
	char known[HOST_LIST_MAX + 64], got[96];
	struct cfgy_kvlist l = { 0 };
	int ret = 0;

	if (!node) {
		ret = cfgy_fail(&ld->y, NULL, NULL,
				"missing required key 'hosts' (the map of cluster hosts)");
		goto out;
	}
	if (cfgy_is_null(node) || node->type != YAML_MAPPING_NODE) {
		ret = cfgy_fail(&ld->y, node, s.err,
				"expected a map of host names to host settings, got %s",
				cfgy_describe(node, got, sizeof(got)));
		goto out;
	}
	ret = cfgy_map_pairs(&ld->y, node, &s, "a map of hosts", &l);
	if (ret < 0)
		goto out;
	if (l.n == 0) {
		ret = cfgy_fail(&ld->y, node, s.err, "expected at least one host");
		goto out;
	}
	ret = resolve_node(ld, node_val, &l);
	if (ret < 0)
		goto out;
	cfg->hosts = calloc(l.n, sizeof(*cfg->hosts));
	if (!cfg->hosts) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		struct cfg_host *h = &cfg->hosts[cfg->n_hosts++];

		if (!is_simple_name(l.v[i].key)) {
			ret = cfgy_fail(&ld->y, l.v[i].key_node, s.err,
					"expected a host name (no '/', ',' or spaces, not starting "
					"with '.'), got '%s'",
					l.v[i].key);
			goto out;
		}
		ret = init_host(h, &l.v[i]);
		if (ret < 0)
			goto out;
		ret = load_host(ld, &l.v[i], h);
		if (ret < 0)
			goto out;
		if (strcmp(h->name, cfg->node) == 0)
			cfg->self = h;
	}
	if (!cfg->self) {
		host_list(&l, known, sizeof(known));
		if (ld->node_from_key)
			ret = cfgy_fail(&ld->y, node_val, "node",
					"expected one of the hosts (%s), got '%s'", known,
					cfg->node);
		else
			ret = cfgy_fail(&ld->y, key, s.err,
					"this node is '%s' (from %s), which is not one of the "
					"hosts (%s); set 'node' or $MESHFS_NODE",
					cfg->node, ld->node_source, known);
	}
out:
	cfgy_kvlist_free(&l);
	return ret;
}

/* ---- listen and token -------------------------------------------------------------------- */

static bool is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return false;
}

/*
 * listen: "HOST:PORT", "[V6]:PORT", "HOST" or a bare IPv6 address (port from the node's own
 * entry), ":PORT" (host from the node's own entry).
 */
static int load_listen(struct loader *ld, const yaml_node_t *node)
{
	static const char what[] = "HOST:PORT with a port in 1-65535";
	struct mfs_config *cfg = ld->cfg;
	const char *s, *port = NULL;
	char *host = NULL, got[96];
	size_t hlen;
	int ret;

	ret = cfgy_get_scalar(&ld->y, node, "listen", what, &s);
	if (ret < 0 || !s)
		goto out;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || (close[1] && close[1] != ':'))
			goto bad;
		host = strndup(s + 1, close - s - 1);
		port = close[1] ? close + 2 : NULL;
	} else if (strchr(s, ':') && strchr(s, ':') == strrchr(s, ':')) {
		hlen = strchr(s, ':') - s;
		host = strndup(s, hlen);
		port = s + hlen + 1;
	} else {
		host = strdup(s);
	}
	if (!host) {
		ret = -ENOMEM;
		goto out;
	}
	if (port) {
		char *end;
		long v;

		errno = 0;
		v = isdigit((unsigned char)*port) ? strtol(port, &end, 10) : 0;
		if (!isdigit((unsigned char)*port) || *end || errno || v < 1 || v > 65535)
			goto bad;
		cfg->listen_port = (int)v;
	}
	/* A bare number is a port someone forgot the host for, not a host name. */
	if (!port && (!*host || strspn(host, "0123456789") == strlen(host)))
		goto bad;
	if (*host) {
		free(cfg->listen_host);
		cfg->listen_host = host;
		host = NULL;
	}
	goto out;
bad:
	ret = cfgy_fail(&ld->y, node, "listen", "expected %s, got %s", what,
			cfgy_describe(node, got, sizeof(got)));
out:
	free(host);
	return ret;
}

static int load_token(struct loader *ld, const yaml_node_t *node)
{
	static const char key[] = "cluster_token_file";
	struct mfs_config *cfg = ld->cfg;
	char *tok = NULL;
	int ret;

	ret = cfgy_get_path(&ld->y, node, key, true, &cfg->token_file);
	if (ret < 0 || !cfg->token_file)
		goto out;
	ret = read_small_file(cfg->token_file, &tok);
	if (ret < 0) {
		/* Keep the read's errno (-ENOENT, -EACCES): it is a file problem. */
		int err = ret;

		cfgy_fail(&ld->y, node, key, "cannot read '%s': %s", cfg->token_file,
			  strerror(-err));
		ret = err;
		goto out;
	}
	str_strip(tok);
	if (!*tok) {
		ret = cfgy_fail(&ld->y, node, key, "'%s' is empty (expected the cluster token)",
				cfg->token_file);
		goto out;
	}
	/* The token goes into an HTTP header: one word, nothing that could end the line. */
	for (const char *p = tok; *p; p++) {
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			ret = cfgy_fail(&ld->y, node, key,
					"'%s' holds more than one word or line (expected the "
					"cluster token)",
					cfg->token_file);
			goto out;
		}
	}
	cfg->token = tok;
	tok = NULL;
out:
	free(tok);
	return ret;
}

static int init_defaults(struct mfs_config *cfg)
{
	int ret = 0;

	for (size_t i = 0; i < ARRAY_SIZE(default_categories); i++) {
		cfg->categories[i].name = strdup(default_categories[i].name);
		cfg->categories[i].path = strdup(default_categories[i].path);
		cfg->n_categories++;
		if (!cfg->categories[i].name || !cfg->categories[i].path)
			ret = -ENOMEM;
	}
	cfg->auto_sync.enabled = true;
	cfg->auto_sync.strategy = CFG_STRATEGY_AUTO;
	cfg->auto_sync.interval_seconds = 60;
	cfg->auto_sync.read_deadline_seconds = 30;
	cfg->auto_sync.circuit_failure_threshold = 5;
	cfg->auto_sync.circuit_recovery_seconds = 60;
	cfg->auto_sync.shutdown_flush_seconds = 30;
	cfg->snapshot_interval_seconds = 30;
	cfg->publish_quiet_seconds = 2;
	cfg->sync_routing.replication_target = 2;
	return ret;
}

enum {
	T_NODE,
	T_TOKEN,
	T_STATE_DIR,
	T_LISTEN,
	T_CACHE,
	T_CATEGORIES,
	T_AUTO_SYNC,
	T_SNAPSHOT,
	T_QUIET,
	T_ROUTING,
	T_HOSTS,
	T_COUNT,
};

static const char *const top_keys[T_COUNT] = {
	[T_NODE] = "node",
	[T_TOKEN] = "cluster_token_file",
	[T_STATE_DIR] = "state_dir",
	[T_LISTEN] = "listen",
	[T_CACHE] = "cache",
	[T_CATEGORIES] = "categories",
	[T_AUTO_SYNC] = "auto_sync",
	[T_SNAPSHOT] = "snapshot_interval_seconds",
	[T_QUIET] = "publish_quiet_seconds",
	[T_ROUTING] = "sync_routing",
	[T_HOSTS] = "hosts",
};

/* Walks the loaded document into ld->cfg, sections in the order their dependencies need. */
static int load_document(struct loader *ld)
{
	static const struct cfgy_sect s = { "", "" };
	static const struct cfgy_field snapshot = { "snapshot_interval_seconds", CFGY_INT_NONNEG,
						    offsetof(struct mfs_config,
							     snapshot_interval_seconds) };
	static const struct cfgy_field quiet = { "publish_quiet_seconds", CFGY_NUM,
						 offsetof(struct mfs_config,
							  publish_quiet_seconds) };
	yaml_node_t *root = cfgy_root(&ld->y), *top[T_COUNT] = { 0 };
	yaml_node_t *top_key[T_COUNT] = { 0 };
	struct mfs_config *cfg = ld->cfg;
	const char *listen_key = "listen";
	const yaml_node_t *listen_node;
	struct cfgy_kvlist l = { 0 };
	char got[96];
	int ret;

	if (!root || cfgy_is_null(root)) {
		ret = cfgy_fail(&ld->y, NULL, NULL,
				"the file is empty (expected a map with at least the key 'hosts')");
		goto out;
	}
	if (root->type != YAML_MAPPING_NODE) {
		ret = cfgy_fail(&ld->y, root, NULL, "expected a map at the top level, got %s",
				cfgy_describe(root, got, sizeof(got)));
		goto out;
	}
	ret = cfgy_map_pairs(&ld->y, root, &s, "a map", &l);
	for (size_t i = 0; ret == 0 && i < l.n; i++) {
		size_t t;

		for (t = 0; t < T_COUNT && strcmp(l.v[i].key, top_keys[t]) != 0; t++)
			;
		if (t < T_COUNT) {
			top[t] = l.v[i].val;
			top_key[t] = l.v[i].key_node;
		} else {
			ret = cfgy_warn_unknown(&ld->y, &l.v[i], s.warn);
		}
	}
	if (ret < 0)
		goto out;

	ret = load_categories(ld, top[T_CATEGORIES]);
	if (ret == 0)
		ret = load_cache(ld, top[T_CACHE]);
	if (ret == 0)
		ret = load_auto_sync(ld, top[T_AUTO_SYNC]);
	if (ret == 0)
		ret = cfgy_set_field(&ld->y, cfg, &snapshot, top[T_SNAPSHOT], snapshot.name);
	if (ret == 0)
		ret = cfgy_set_field(&ld->y, cfg, &quiet, top[T_QUIET], quiet.name);
	if (ret == 0)
		ret = load_sync_routing(ld, top[T_ROUTING]);
	if (ret == 0)
		ret = load_hosts(ld, top_key[T_HOSTS], top[T_HOSTS], top[T_NODE]);
	if (ret < 0)
		goto out;

	ret = cfgy_get_path(&ld->y, top[T_STATE_DIR], top_keys[T_STATE_DIR], true, &cfg->state_dir);
	if (ret < 0)
		goto out;
	if (!cfg->state_dir && asprintf(&cfg->state_dir, "%s/%s", DEFAULT_STATE_ROOT,
					cfg->node) < 0) {
		cfg->state_dir = NULL;
		ret = -ENOMEM;
		goto out;
	}
	cfg->listen_host = strdup(cfg->self->address ? cfg->self->address : "127.0.0.1");
	cfg->listen_port = cfg->self->data_server_port;
	if (!cfg->listen_host) {
		ret = -ENOMEM;
		goto out;
	}
	ret = load_listen(ld, top[T_LISTEN]);
	if (ret < 0)
		goto out;
	ret = load_token(ld, top[T_TOKEN]);
	if (ret < 0)
		goto out;
	if (!cfg->token && !is_loopback(cfg->listen_host)) {
		bool v6 = strchr(cfg->listen_host, ':') != NULL;
		char key[CFGY_KEY_MAX];

		/* Name the key that chose the address, so the reader knows what to change. */
		listen_node = top[T_LISTEN];
		if (cfgy_is_null(listen_node) && ld->self_addr_key) {
			snprintf(key, sizeof(key), "hosts.%s.%s", cfg->node, ld->self_addr_key);
			listen_key = key;
			listen_node = ld->self_addr_node;
		}
		ret = cfgy_fail(&ld->y, listen_node, listen_key,
				"cluster_token_file is required when listening on %s%s%s:%d (not a "
				"loopback address)",
				v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "", cfg->listen_port);
	}
out:
	cfgy_kvlist_free(&l);
	return ret;
}

int config_load(const char *path, struct mfs_config **out, char *err, size_t errlen)
{
	struct loader ld = { 0 };
	struct mfs_config *cfg = NULL;
	int ret;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg) {
		ret = -ENOMEM;
		goto out;
	}
	ld.cfg = cfg;
	ret = init_defaults(cfg);
	if (ret < 0)
		goto out;
	cfg->path = strdup(path);
	if (!cfg->path) {
		ret = -ENOMEM;
		goto out;
	}
	ret = cfgy_open(&ld.y, path, err, errlen);
	if (ret < 0)
		goto out;
	ret = load_document(&ld);
	if (ret < 0)
		goto out;
	*out = cfg;
	cfg = NULL;
out:
	if (ret < 0 && err && errlen && !err[0])
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
	cfgy_close(&ld.y);
	config_free(cfg);
	return ret;
}

static void free_host(struct cfg_host *h)
{
	free(h->name);
	free(h->address);
	free(h->root);
	for (size_t i = 0; i < CFG_MAX_CATEGORIES; i++)
		free(h->storage_paths[i]);
	for (size_t i = 0; i < h->n_shared_storage; i++)
		free(h->shared_storage[i]);
	free(h->shared_storage);
	free(h->role);
	free(h->status);
	free(h->ssh_user);
	free(h->ssh_key);
}

void config_free(struct mfs_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->path);
	free(cfg->node);
	free(cfg->token_file);
	free(cfg->token);
	free(cfg->state_dir);
	free(cfg->listen_host);
	for (size_t i = 0; i < cfg->n_categories; i++) {
		free(cfg->categories[i].name);
		free(cfg->categories[i].path);
	}
	for (size_t i = 0; i < cfg->auto_sync.n_host_bandwidth_overrides; i++)
		free(cfg->auto_sync.host_bandwidth_overrides[i].pattern);
	free(cfg->auto_sync.host_bandwidth_overrides);
	for (size_t i = 0; i < cfg->sync_routing.n_excluded_hosts; i++)
		free(cfg->sync_routing.excluded_hosts[i]);
	free(cfg->sync_routing.excluded_hosts);
	for (size_t i = 0; i < cfg->n_hosts; i++)
		free_host(&cfg->hosts[i]);
	free(cfg->hosts);
	free(cfg);
}

/* ---- queries ----------------------------------------------------------------------------- */

char *config_category_dir(const struct mfs_config *cfg, const struct cfg_host *host,
			  size_t cat_idx)
{
	char *dir = NULL;

	if (cat_idx >= cfg->n_categories)
		goto out;
	if (host->storage_paths[cat_idx]) {
		dir = strdup(host->storage_paths[cat_idx]);
	} else if (host->root && strcmp(host->root, "/") == 0) {
		/* path_join("/", x) would give "//x". */
		if (asprintf(&dir, "/%s", cfg->categories[cat_idx].path) < 0)
			dir = NULL;
	} else if (host->root) {
		dir = path_join(host->root, cfg->categories[cat_idx].path);
	}
out:
	return dir;
}

int config_category_index(const struct mfs_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_categories; i++)
		if (strcmp(cfg->categories[i].name, name) == 0)
			return (int)i;
	return -ENOENT;
}

const struct cfg_host *config_find_host(const struct mfs_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_hosts; i++)
		if (strcmp(cfg->hosts[i].name, name) == 0)
			return &cfg->hosts[i];
	return NULL;
}

bool config_is_shared(const struct cfg_host *host, const char *dir)
{
	for (size_t i = 0; i < host->n_shared_storage; i++)
		if (path_is_under(dir, host->shared_storage[i]))
			return true;
	return false;
}

int config_parse_size(const char *s, uint64_t *out)
{
	uint64_t v = 0, mult = 1;
	const char *p = s;
	int ret = -EINVAL;

	if (!s || !isdigit((unsigned char)*p))
		goto out;
	for (; isdigit((unsigned char)*p); p++)
		if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
			goto out;
	switch (*p) {
	case 'K':
	case 'k':
		mult = 1ULL << 10;
		break;
	case 'M':
	case 'm':
		mult = 1ULL << 20;
		break;
	case 'G':
	case 'g':
		mult = 1ULL << 30;
		break;
	case 'T':
	case 't':
		mult = 1ULL << 40;
		break;
	}
	if (mult > 1)
		p++;
	if (mult > 1 && strcmp(p, "iB") == 0)
		p += 2;
	else if (strcmp(p, "B") == 0)
		p++;
	if (*p || __builtin_mul_overflow(v, mult, &v))
		goto out;
	*out = v;
	ret = 0;
out:
	return ret;
}

const char *config_strategy_name(enum cfg_strategy s)
{
	if ((size_t)s < ARRAY_SIZE(strategy_names))
		return strategy_names[s];
	return "unknown";
}
