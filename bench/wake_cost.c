// For bench/audio_cpu.sh: what this machine charges a thread for waking from
// idle, and for finding its working set cold afterwards. An audio-only
// publisher wakes the server 40-50 times a second with a CPU that has gone
// idle in between, so these two figures bound what any per-frame work can
// cost here, whatever the server does.
// Prints one JSON object: CPU time per wake after sleeping 23 ms (one AAC
// frame at 44.1 kHz) with nothing to do, and the extra time to read 256 KiB
// (about the transcoder's working set) after 23 ms asleep and after 0.1 ms.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// Keeps the reads below from being optimised away.
volatile unsigned char sink;

static double thread_cpu_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void sleep_us(long us) {
  struct timespec t = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&t, NULL);
}

// Mean CPU µs per wake over `n` sleeps of `us`, and the mean µs spent reading
// `ws` bytes (one load per 64-byte line) right after each wake.
static void measure(long us, int n, size_t ws, double *per_wake, double *touch) {
  unsigned char *buf = ws ? malloc(ws) : NULL;
  if (ws) memset(buf, 1, ws);
  double t_touch = 0, c0 = thread_cpu_us();
  for (int i = 0; i < n; i++) {
    sleep_us(us);
    double a = thread_cpu_us();
    unsigned char s = 0;
    for (size_t j = 0; j < ws; j += 64) s += buf[j];
    sink = s;
    t_touch += thread_cpu_us() - a;
  }
  *per_wake = (thread_cpu_us() - c0) / n;
  *touch = t_touch / n;
  free(buf);
}

int main(void) {
  double wake, none, cold, warm, unused;
  measure(23000, 100, 0, &wake, &none);
  measure(23000, 100, 256 * 1024, &unused, &cold);
  measure(100, 1000, 256 * 1024, &unused, &warm);
  printf("{\"wake_us\":%.1f,\"touch_256k_after_23ms_us\":%.1f,\"touch_256k_after_0.1ms_us\":%.1f}\n",
         wake, cold, warm);
  return 0;
}
