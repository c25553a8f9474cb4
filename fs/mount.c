/*
 * mount — `meshfs mount -c CONFIG MOUNTPOINT [-f] [-o FUSEOPTS]`.
 *
 * Everything that can be checked before the daemon starts (config, mountpoint) is checked in
 * the calling process, so the user sees the error on the terminal. Without -f the command
 * then forks: the child becomes the daemon (its own session, stdio to <state_dir>/meshfs.log)
 * and reports "ready" or its error through a pipe; the parent waits for that word, bounded,
 * and exits 0 or 1. Threads are only started in the child, after the fork.
 *
 * A mountpoint left behind by a daemon that was killed (ENOTCONN on stat) is unmounted
 * lazily before mounting again.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/fs.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/log.h"
#include "sync/util.h"

#define MOUNT_READY_TIMEOUT_MS (120 * 1000)

static void usage(FILE *out)
{
	fprintf(out, "usage: meshfs mount -c CONFIG MOUNTPOINT [-f] [-o FUSEOPTS]\n");
}

/* Unmounts a dead FUSE mount at @mnt. 0 when @mnt is usable afterwards. */
static int clean_stale_mount(const char *mnt)
{
	struct statvfs sv;
	pid_t pid;
	int status;

	/* statvfs always asks the filesystem: stat could be answered from the kernel's
	 * attribute cache of the dead mount and look healthy. */
	if (statvfs(mnt, &sv) == 0 || errno != ENOTCONN)
		return 0;
	log_msg(LOG_WARNING, "%s: cleaning up the mount of a daemon that is gone", mnt);
	if (umount2(mnt, MNT_DETACH) == 0)
		return 0;
	/* Not root: fusermount3 can undo a user's own FUSE mount. */
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-z", mnt, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0)
		return -EBUSY;
	return 0;
}

static int check_mountpoint(const char *mnt)
{
	struct stat st;

	if (clean_stale_mount(mnt) < 0) {
		fprintf(stderr, "meshfs mount: %s is a stale mount that could not be unmounted; "
				"run 'fusermount3 -u -z %s'\n", mnt, mnt);
		return -EBUSY;
	}
	if (stat(mnt, &st) < 0) {
		fprintf(stderr, "meshfs mount: mountpoint %s: %s\n", mnt, strerror(errno));
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "meshfs mount: mountpoint %s is not a directory\n", mnt);
		return -ENOTDIR;
	}
	return 0;
}

/* Runs the daemon: lock, start, mount, serve. Reports readiness on @ready_fd (-1: none).
 * Returns the process exit status. */
static int run_daemon(const struct mfs_config *cfg, const char *mnt, const char *fuse_opts,
		      int ready_fd)
{
	struct daemon *d = NULL;
	struct fs_ctx *fs = NULL;
	char err[1024] = "";
	int lock_fd = -1, ret;

	umask(0); /* modes of new files are the caller's, already masked by the kernel */
	ret = daemon_lock_state_dir(cfg, &lock_fd, err, sizeof(err));
	if (ret < 0)
		goto out;
	ret = daemon_start(cfg, lock_fd, &d, err, sizeof(err));
	if (ret < 0) {
		close(lock_fd);
		goto out;
	}
	ret = fs_new(d, fuse_opts, &fs);
	if (ret < 0) {
		snprintf(err, sizeof(err), "cannot set up FUSE (options '%s'); see the log",
			 fuse_opts ? fuse_opts : "");
		goto out;
	}
	ret = fs_mount(fs, mnt);
	if (ret < 0) {
		snprintf(err, sizeof(err), "cannot mount at %s (is /dev/fuse available, and are "
			 "you root or is user_allow_other set in /etc/fuse.conf?)", mnt);
		goto out;
	}
	log_msg(LOG_INFO, "node %s mounted at %s (config %s, state %s)", cfg->node, mnt,
		cfg->path, cfg->state_dir);
	if (ready_fd >= 0) {
		write_all(ready_fd, "ready\n", 6);
		close(ready_fd);
		ready_fd = -1;
	}
	ret = fs_loop(fs);
	log_msg(LOG_INFO, "node %s: unmounting %s", cfg->node, mnt);
out:
	if (err[0]) {
		log_msg(LOG_ERR, "%s", err);
		if (ready_fd >= 0) {
			write_all(ready_fd, err, strlen(err));
			write_all(ready_fd, "\n", 1);
		}
	}
	if (ready_fd >= 0)
		close(ready_fd);
	daemon_stop_fetch(d);
	fs_destroy(fs);
	daemon_stop(d);
	return ret < 0 ? 1 : 0;
}

/* Waits for the child's first line: "ready" or an error. Returns the exit status. */
static int wait_ready(pid_t child, int fd, const char *log_path)
{
	char buf[1100];
	size_t len = 0;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int64_t deadline = mono_ns() + (int64_t)MOUNT_READY_TIMEOUT_MS * 1000000;

	while (len < sizeof(buf) - 1) {
		int left = (int)((deadline - mono_ns()) / 1000000);
		ssize_t n;

		if (left <= 0) {
			fprintf(stderr, "meshfs mount: the daemon (pid %d) did not become ready in "
					"%d s; see %s\n", (int)child, MOUNT_READY_TIMEOUT_MS / 1000,
				log_path);
			return 1;
		}
		if (poll(&pfd, 1, left) < 0 && errno != EINTR)
			break;
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
		if (memchr(buf, '\n', len))
			break;
	}
	buf[len] = '\0';
	if (strncmp(buf, "ready\n", 6) == 0)
		return 0;
	if (len == 0) {
		int status;

		/* The child died before it could say why: reap it and point at its log. */
		waitpid(child, &status, 0);
		fprintf(stderr, "meshfs mount: the daemon exited during start-up; see %s\n",
			log_path);
		return 1;
	}
	waitpid(child, NULL, 0);
	fprintf(stderr, "meshfs mount: %s", buf);
	return 1;
}

int mount_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct mfs_config *cfg = NULL;
	const char *cfg_path = NULL, *fuse_opts = NULL;
	char mnt[PATH_MAX], err[1024], *log_path = NULL;
	bool foreground = false;
	int c, ret = 2, pipefd[2];
	pid_t pid;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:fo:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfg_path = optarg;
			break;
		case 'f':
			foreground = true;
			break;
		case 'o':
			fuse_opts = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!cfg_path || optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	if (!realpath(argv[optind], mnt)) {
		if (errno != ENOTCONN) {
			fprintf(stderr, "meshfs mount: mountpoint %s: %s\n", argv[optind],
				strerror(errno));
			return 1;
		}
		snprintf(mnt, sizeof(mnt), "%s", argv[optind]);
	}
	ret = config_load(cfg_path, &cfg, err, sizeof(err));
	if (ret < 0) {
		fprintf(stderr, "meshfs mount: %s\n", err);
		return 1;
	}
	ret = 1;
	if (check_mountpoint(mnt) < 0)
		goto out;
	if (foreground) {
		ret = run_daemon(cfg, mnt, fuse_opts, -1);
		goto out;
	}

	/* Create the state dir here so the log has a home; the daemon re-checks it. */
	if (mkdir_p(cfg->state_dir, 0755) < 0 || access(cfg->state_dir, W_OK) < 0) {
		fprintf(stderr, "meshfs mount: state dir %s is not writable: %s\n", cfg->state_dir,
			strerror(errno));
		goto out;
	}
	log_path = path_join(cfg->state_dir, "meshfs.log");
	if (!log_path || pipe2(pipefd, O_CLOEXEC) < 0) {
		fprintf(stderr, "meshfs mount: %s\n", strerror(errno));
		goto out;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "meshfs mount: fork: %s\n", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);

		close(pipefd[0]);
		setsid();
		if (nul >= 0)
			dup2(nul, STDIN_FILENO);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		if (chdir("/") < 0) {
			/* Not fatal: every path the daemon uses is absolute. */
		}
		_exit(run_daemon(cfg, mnt, fuse_opts, pipefd[1]));
	}
	close(pipefd[1]);
	ret = wait_ready(pid, pipefd[0], log_path);
	close(pipefd[0]);
out:
	free(log_path);
	config_free(cfg);
	return ret;
}
