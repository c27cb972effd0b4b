// LD_PRELOAD shim for bench/join_burst.sh: caps SO_RCVBUF requests at
// RCVBUF_CAP bytes (default 212992, the kernel's default net.core.rmem_max),
// so a client on a host with a raised rmem_max gets the receive buffer it
// would get on a stock Linux host. Chromium asks for 1 MB on its WebRTC
// sockets; without this it gets it wherever rmem_max allows.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
  static int (*real)(int, int, int, const void *, socklen_t);
  if (!real) real = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
  if (level == SOL_SOCKET && (name == SO_RCVBUF || name == SO_RCVBUFFORCE) && len == sizeof(int)) {
    const char *env = getenv("RCVBUF_CAP");
    int cap = env ? atoi(env) : 212992;
    int want = *(const int *)value;
    if (want > cap) return real(fd, level, SO_RCVBUF, &cap, len);
  }
  return real(fd, level, name, value, len);
}
