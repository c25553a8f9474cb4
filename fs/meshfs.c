/*
 * meshfs — the one binary: `meshfs COMMAND ...` dispatches to the command's entry point.
 * mount lives in fs/mount.c; the commands that talk to a running daemon (status) or run
 * without FUSE (serve) are here, thin over sync/.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"
#include "sync/config.h"
#include "sync/control.h"
#include "sync/daemon.h"
#include "sync/log.h"
#include "sync/status.h"

struct command {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *usage;
	const char *summary;
};

static int serve_main(int argc, char **argv);
static int status_main(int argc, char **argv);
static int sync_main(int argc, char **argv);
static int check_main(int argc, char **argv);
static int help_main(int argc, char **argv);

static const struct command commands[] = {
	{ "mount", mount_main, "mount -c CONFIG MOUNTPOINT [-f] [-o FUSEOPTS]",
	  "mount this node's view of the cluster (and run its data server)" },
	{ "serve", serve_main, "serve -c CONFIG",
	  "run the data server and catalog only, in the foreground" },
	{ "sync", sync_main,
	  "sync [all|games|models|training] [--board-type B] [--num-players N] "
	  "[--priority P] [--host H] [--no-wait] -c CONFIG",
	  "bring data up to date now and report what is local and verified" },
	{ "status", status_main, "status [--json] -c CONFIG", "show the node's data status" },
	{ "check", check_main, "check -c CONFIG",
	  "verify cached copies against their hashes; bad chunks are dropped and fetched again" },
	{ "help", help_main, "help [COMMAND]", "show help" },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void print_usage(FILE *out)
{
	fprintf(out, "usage: meshfs COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
	fprintf(out, "\n'meshfs help COMMAND' shows a command's options; 'meshfs --version' the "
		     "version.\n");
}

static int help_main(int argc, char **argv)
{
	const struct command *c;

	if (argc < 2) {
		print_usage(stdout);
		return 0;
	}
	c = find_command(argv[1]);
	if (!c) {
		fprintf(stderr, "meshfs help: unknown command '%s'\n", argv[1]);
		return 2;
	}
	printf("usage: meshfs %s\n\n%s\n", c->usage, c->summary);
	return 0;
}

/* Parses "-c CONFIG" plus the flags in @flags (each a long option without argument) for the
 * simple commands. Returns the index of the first non-option argument or -1. */
static int parse_common(int argc, char **argv, const char **cfg_path, bool *json)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			*cfg_path = optarg;
			break;
		case 'j':
			if (!json)
				return -1;
			*json = true;
			break;
		default:
			return -1;
		}
	}
	return *cfg_path ? optind : -1;
}

static int load_config(const char *cmd, const char *path, struct mfs_config **cfg)
{
	char err[1024];

	if (config_load(path, cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "meshfs %s: %s\n", cmd, err);
		return -1;
	}
	return 0;
}

static int status_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL;
	bool json = false;
	int ret = 1, r;

	if (parse_common(argc, argv, &cfg_path, &json) != argc) {
		fprintf(stderr, "usage: meshfs status [--json] -c CONFIG\n");
		return 2;
	}
	if (load_config("status", cfg_path, &cfg) < 0)
		return 1;
	req = json_pack("{s:s}", "cmd", "status");
	r = req ? control_request(cfg->state_dir, req, &resp) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs status: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json) {
		char *text = json_dumps(resp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

		if (text)
			printf("%s\n", text);
		free(text);
	} else {
		status_print_human(resp, stdout);
	}
	ret = 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

static int serve_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	struct daemon *d = NULL;
	char err[1024] = "";
	int lock_fd = -1, sig, ret = 1;
	sigset_t set;

	if (parse_common(argc, argv, &cfg_path, NULL) != argc) {
		fprintf(stderr, "usage: meshfs serve -c CONFIG\n");
		return 2;
	}
	if (load_config("serve", cfg_path, &cfg) < 0)
		return 1;
	/* Block the stop signals before any thread starts, so only sigwait() sees them. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	umask(0);
	if (daemon_lock_state_dir(cfg, &lock_fd, err, sizeof(err)) < 0 ||
	    daemon_start(cfg, lock_fd, &d, err, sizeof(err)) < 0) {
		if (lock_fd >= 0 && !d)
			close(lock_fd);
		fprintf(stderr, "meshfs serve: %s\n", err);
		goto out;
	}
	log_msg(LOG_INFO, "node %s serving on %s:%d", cfg->node, cfg->listen_host,
		cfg->listen_port);
	if (sigwait(&set, &sig) == 0)
		log_msg(LOG_INFO, "node %s: stopping on signal %d", cfg->node, sig);
	ret = 0;
out:
	daemon_stop(d);
	config_free(cfg);
	return ret;
}

static void print_bytes(FILE *out, json_int_t bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	size_t u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	fprintf(out, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static int sync_usage(void)
{
	fprintf(stderr, "usage: meshfs sync [all|games|models|training] [--board-type B] "
			"[--num-players N] [--priority low|normal|high|critical] [--host H] "
			"[--no-wait] -c CONFIG\n");
	return 2;
}

static int sync_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "board-type", required_argument, NULL, 'b' },
		{ "num-players", required_argument, NULL, 'n' },
		{ "priority", required_argument, NULL, 'p' },
		{ "host", required_argument, NULL, 'H' },
		{ "no-wait", no_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cfg_path = NULL, *board = NULL, *prio = "high", *host = NULL, *what = "all";
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL, *failed;
	bool no_wait = false;
	long players = 0;
	char *end;
	int c, r, ret = 1;
	size_t i;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfg_path = optarg;
			break;
		case 'b':
			board = optarg;
			break;
		case 'n':
			players = strtol(optarg, &end, 10);
			if (*end || players < 1 || players > 64) {
				fprintf(stderr, "meshfs sync: --num-players takes a number "
						"from 1 to 64, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'p':
			prio = optarg;
			if (strcmp(prio, "low") && strcmp(prio, "normal") && strcmp(prio, "high") &&
			    strcmp(prio, "critical")) {
				fprintf(stderr, "meshfs sync: --priority is low, normal, high or "
						"critical, not '%s'\n", prio);
				return 2;
			}
			break;
		case 'H':
			host = optarg;
			break;
		case 'w':
			no_wait = true;
			break;
		default:
			return sync_usage();
		}
	}
	if (optind < argc)
		what = argv[optind++];
	if (optind < argc || !cfg_path)
		return sync_usage();
	if (load_config("sync", cfg_path, &cfg) < 0)
		return 1;
	if (strcmp(what, "all") != 0 && config_category_index(cfg, what) < 0) {
		fprintf(stderr, "meshfs sync: unknown category '%s' (all", what);
		for (i = 0; i < cfg->n_categories; i++)
			fprintf(stderr, ", %s", cfg->categories[i].name);
		fprintf(stderr, ")\n");
		ret = 2;
		goto out;
	}
	if (host && !config_find_host(cfg, host)) {
		fprintf(stderr, "meshfs sync: --host %s is not one of the hosts in %s\n", host,
			cfg->path);
		ret = 2;
		goto out;
	}
	req = json_pack("{s:s, s:s, s:s, s:b}", "cmd", "sync", "what", what, "priority", prio,
			"no_wait", no_wait);
	if (req && board)
		json_object_set_new(req, "board_type", json_string(board));
	if (req && players)
		json_object_set_new(req, "num_players", json_integer(players));
	if (req && host)
		json_object_set_new(req, "host", json_string(host));
	r = req ? control_request(cfg->state_dir, req, &resp) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs sync: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json_object_get(resp, "error")) {
		fprintf(stderr, "meshfs sync: %s\n",
			json_string_value(json_object_get(resp, "error")));
		goto out;
	}
	if (no_wait) {
		printf("sync %s: requested\n", what);
		ret = 0;
		goto out;
	}
	printf("sync %s: %lld of %lld files local and verified (", what,
	       (long long)json_integer_value(json_object_get(resp, "verified_files")),
	       (long long)json_integer_value(json_object_get(resp, "files")));
	print_bytes(stdout, json_integer_value(json_object_get(resp, "verified_bytes")));
	printf(")\n");
	failed = json_object_get(resp, "failed");
	for (i = 0; i < json_array_size(failed); i++) {
		json_t *f = json_array_get(failed, i);

		printf("FAILED %s (from %s): %s\n", json_string_value(json_object_get(f, "path")),
		       json_string_value(json_object_get(f, "host")),
		       json_string_value(json_object_get(f, "error")));
	}
	ret = json_integer_value(json_object_get(resp, "failures")) > 0 ? 1 : 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

static int check_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL, *bad, *b;
	size_t i;
	int ret = 1, r;

	if (parse_common(argc, argv, &cfg_path, NULL) != argc) {
		fprintf(stderr, "usage: meshfs check -c CONFIG\n");
		return 2;
	}
	if (load_config("check", cfg_path, &cfg) < 0)
		return 1;
	/* The daemon owns the cache; it verifies it while it keeps serving. */
	req = json_pack("{s:s}", "cmd", "check");
	r = req ? control_request_timeout(cfg->state_dir, req, &resp, 3600 * 1000) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs check: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json_object_get(resp, "error")) {
		fprintf(stderr, "meshfs check: %s\n",
			json_string_value(json_object_get(resp, "error")));
		goto out;
	}
	bad = json_object_get(resp, "bad");
	json_array_foreach(bad, i, b)
		printf("BAD %s/%s: %s (quarantined: fetched again when read)\n",
		       json_string_value(json_object_get(b, "category")),
		       json_string_value(json_object_get(b, "path")),
		       json_string_value(json_object_get(b, "problem")));
	printf("meshfs check: %lld cached versions verified, %zu bad\n",
	       (long long)json_integer_value(json_object_get(resp, "checked")),
	       json_array_size(bad));
	ret = json_array_size(bad) ? 1 : 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

int main(int argc, char **argv)
{
	const struct command *c;
	const char *level = getenv("MESHFS_LOG_LEVEL");

	if (level && log_parse_level(level) >= 0)
		log_set_level(log_parse_level(level));
	if (argc < 2) {
		print_usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("meshfs %s\n", MESHFS_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		print_usage(stdout);
		return 0;
	}
	c = find_command(argv[1]);
	if (!c) {
		fprintf(stderr, "meshfs: unknown command '%s'\n\n", argv[1]);
		print_usage(stderr);
		return 2;
	}
	return c->main(argc - 1, argv + 1);
}
