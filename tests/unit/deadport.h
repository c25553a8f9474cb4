/*
 * deadport — a loopback port where nothing listens, for unit tests of peers that must fail.
 */
#ifndef MESHFS_TEST_DEADPORT_H
#define MESHFS_TEST_DEADPORT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A port on 127.0.0.1 where nothing listens (bound, then closed). */
static int dead_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &sl) < 0)
		abort();
	port = ntohs(sin.sin_port);
	close(fd);
	return port;
}

#endif
