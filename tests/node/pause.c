/* The sandbox ("pause") container of the test node: holds the pod's namespaces open, reaps the children that
 * are re-parented to it (it is PID 1 when the pod shares its PID namespace), and exits on SIGINT or SIGTERM.
 * Built by tests/node/build.sh as a static binary and packed as an image by oci-image.py, because no image
 * can be pulled here. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal) { _exit(signal == SIGTERM ? 0 : 1); }

static void reap(int signal) {
  (void)signal;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction action = {0};
  action.sa_handler = stop;
  sigaction(SIGINT, &action, NULL);
  sigaction(SIGTERM, &action, NULL);
  action.sa_handler = reap;
  action.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &action, NULL);
  for (;;) pause();
}
