/* forward_dump.c — the dump build's recorder (see forward_dump.h): every payload the relay queues
 * for a receiver, appended as sent to one file. O_APPEND writes keep the service threads' records
 * whole; the order between threads does not matter to the tests, which search the bytes. */
#include "forward_dump.h"

#ifdef RELAY_DUMP_FORWARDED
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static int dump_fd = -1;
static pthread_once_t dump_once = PTHREAD_ONCE_INIT;

static void open_dump(void)
{
    /* A test-only build: the environment is how the test names the file, without a flag in
     * the default build's option table. */
    const char *path = getenv("RELAY_DUMP_FORWARDED_FILE");
    if (path && *path)
        dump_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

void forward_dump(const unsigned char *bytes, size_t length)
{
    pthread_once(&dump_once, open_dump);
    while (dump_fd >= 0 && length > 0) {
        ssize_t written = write(dump_fd, bytes, length);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0)
            return;
        bytes += written;
        length -= (size_t)written;
    }
}
#else
/* ISO C wants something in a translation unit. */
typedef int forward_dump_is_off;
#endif
