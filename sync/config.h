/*
 * config — the meshfs configuration, read from YAML with libyaml.
 *
 * The format is a superset of the distributed_hosts.yaml files that training clusters already
 * keep (see ../shared/INTERFACE.md and docs/config.md). The whole file is loaded into a
 * libyaml document, then walked; every value remembers its line, so an error names the file,
 * the line and the key and says what was expected. Keys that meshfs does not use are warned
 * about once each (log_msg LOG_WARNING), never an error. The result is an immutable struct
 * that the daemon shares between threads without a lock.
 */
#ifndef MESHFS_CONFIG_H
#define MESHFS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_MAX_CATEGORIES 16
#define CFG_DEFAULT_PORT 8766

enum cfg_strategy {
	CFG_STRATEGY_AUTO,
	CFG_STRATEGY_HYBRID,
	CFG_STRATEGY_EPHEMERAL,
	CFG_STRATEGY_BROADCAST,
};

/* Transport bits for cfg_host.transports, in the default preference order. */
enum {
	CFG_XPORT_HTTP = 1 << 0,
	CFG_XPORT_SSH = 1 << 1,
	CFG_XPORT_ARIA2 = 1 << 2,
	CFG_XPORT_ALL = CFG_XPORT_HTTP | CFG_XPORT_SSH | CFG_XPORT_ARIA2,
};

/* A namespace top-level dir ("games") and its path under each host's root ("data/games"). */
struct cfg_category {
	char *name;
	char *path;
};

struct cfg_host {
	char *name;
	int line;		/* where the host's entry starts in the file */
	char *address;		/* address, else tailscale_ip, else ssh_host; NULL if none */
	int data_server_port;	/* default CFG_DEFAULT_PORT */
	char *root;		/* root, else ringrift_path; NULL if none */
	/* Per-category override (absolute), indexed like mfs_config.categories; NULL = none.
	 * The YAML key `training_data` names the `training` category. */
	char *storage_paths[CFG_MAX_CATEGORIES];
	char **shared_storage;	/* absolute paths this host sees in common with others */
	size_t n_shared_storage;
	char *role;		/* NULL if none */
	char *status;		/* "ready" if absent */
	bool active;		/* false for terminated/offline/retired/archived/setup */
	bool is_ephemeral;
	char *ssh_user;
	int ssh_port;		/* default 22 */
	char *ssh_key;		/* "~/" already expanded */
	double bandwidth_mbps;	/* 0 = not set */
	unsigned transports;	/* CFG_XPORT_* bits; CFG_XPORT_ALL by default */
	uint8_t transport_order[4]; /* the listed order, as CFG_XPORT_* bits; 0-terminated */
};

struct cfg_bw_override {
	char *pattern;		/* fnmatch(3) glob over host names */
	double mbps;
};

struct mfs_config {
	char *path;		/* the file that was loaded */
	char *node;		/* this node's name: resolved as documented */
	struct cfg_host *self;	/* points into hosts[] */

	char *token_file;	/* NULL if not set */
	char *token;		/* the token file's content, whitespace stripped; NULL if no file */
	char *state_dir;	/* default /var/lib/meshfs/<node> */
	char *listen_host;	/* default: self->address, else 127.0.0.1 */
	int listen_port;	/* default: self->data_server_port */

	uint64_t cache_max_size;	/* bytes; 0 = no limit (default) */
	double cache_min_free_pct;	/* min_free given as "10%"; 0 if given in bytes */
	uint64_t cache_min_free_bytes;	/* min_free given as a size; 0 if given in percent */

	struct cfg_category categories[CFG_MAX_CATEGORIES];
	size_t n_categories;	/* default: games, models, training */

	struct {
		bool enabled;			/* default true */
		enum cfg_strategy strategy;	/* default auto */
		int interval_seconds;		/* default 60 */
		double bandwidth_limit_mbps;	/* 0 = unlimited (default) */
		struct cfg_bw_override *host_bandwidth_overrides;
		size_t n_host_bandwidth_overrides;
		int read_deadline_seconds;	/* default 30 */
		int circuit_failure_threshold;	/* default 5 */
		int circuit_recovery_seconds;	/* default 60 */
		int shutdown_flush_seconds;	/* default 30 */
	} auto_sync;

	int snapshot_interval_seconds;	/* default 30 */
	double publish_quiet_seconds;	/* default 2 */

	struct {
		char **excluded_hosts;	/* names; a list of strings or of maps with `name` */
		size_t n_excluded_hosts;
		int replication_target;	/* default 2 */
	} sync_routing;

	struct cfg_host *hosts;
	size_t n_hosts;
};

/*
 * Loads @path. On success returns 0 and a new config in *out (free with config_free()).
 * On failure returns -errno (-EINVAL for bad content, -ENOENT for a missing file, ...) and
 * writes one line to @err: "FILE:LINE: key 'a.b': expected ..., got '...'" or, for a
 * syntax error, "FILE:LINE:COL: YAML syntax error: ...". @err may be NULL.
 *
 * The node name is taken from the `node` key, else $MESHFS_NODE, else /etc/meshfs/node-id,
 * else gethostname(); it must name one of `hosts` (an error otherwise lists the choices).
 */
int config_load(const char *path, struct mfs_config **out, char *err, size_t errlen);

void config_free(struct mfs_config *cfg);

/*
 * The directory that holds category @cat_idx on @host: its storage_paths override, else
 * root + "/" + category path. Returns a new string (NULL on ENOMEM or when the host has
 * neither root nor override).
 */
char *config_category_dir(const struct mfs_config *cfg, const struct cfg_host *host,
			  size_t cat_idx);

/* The index of category @name, or -ENOENT. */
int config_category_index(const struct mfs_config *cfg, const char *name);

/* The host called @name, or NULL. */
const struct cfg_host *config_find_host(const struct mfs_config *cfg, const char *name);

/* True when @host (this node) sees @dir on storage it shares with others. */
bool config_is_shared(const struct cfg_host *host, const char *dir);

/* "200G" -> 214748364800. Suffixes K/M/G/T (powers of 1024), optional trailing "B"/"iB".
 * Returns 0 or -EINVAL. */
int config_parse_size(const char *s, uint64_t *out);

const char *config_strategy_name(enum cfg_strategy s);

#endif
