/* state_dir.c — finds and creates the relay's state directory (see state_dir.h). */
#include "state_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool fits(int written, size_t size)
{
    return written > 0 && (size_t)written < size;
}

bool state_dir_resolve(const char *configured, char *out, size_t size, char *error,
                       size_t error_size)
{
    const char *systemd = getenv("STATE_DIRECTORY");
    const char *xdg = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");
    int written;
    if (configured && *configured) {
        written = snprintf(out, size, "%s", configured);
    } else if (systemd && *systemd) {
        /* systemd lists one directory per StateDirectory= entry, separated by colons. */
        written = snprintf(out, size, "%.*s", (int)strcspn(systemd, ":"), systemd);
    } else if (xdg && xdg[0] == '/') { /* the XDG spec ignores relative paths */
        written = snprintf(out, size, "%s/%s", xdg, STATE_DIR_NAME);
    } else if (home && home[0] == '/') {
        written = snprintf(out, size, "%s/.local/state/%s", home, STATE_DIR_NAME);
    } else {
        snprintf(error, error_size,
                 "no state directory for the resume secret: set --state-dir (RELAY_STATE_DIR) or "
                 "--secret-file, or HOME");
        return false;
    }
    if (!fits(written, size)) {
        snprintf(error, error_size, "the state directory path is too long");
        return false;
    }
    return true;
}

bool state_dir_create(const char *path, char *error, size_t error_size)
{
    char partial[4096];
    if (!fits(snprintf(partial, sizeof(partial), "%s", path), sizeof(partial))) {
        snprintf(error, error_size, "the state directory path is too long");
        return false;
    }
    /* Each missing component in turn, like mkdir -p. */
    for (char *slash = partial + 1;; slash++) {
        bool last = *slash == '\0';
        if (*slash != '/' && !last)
            continue;
        *slash = '\0';
        if (partial[0] && mkdir(partial, 0700) != 0 && errno != EEXIST) {
            snprintf(error, error_size, "cannot create the state directory %s: %s", partial,
                     strerror(errno));
            return false;
        }
        if (last)
            break;
        *slash = '/';
    }
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode)) {
        snprintf(error, error_size, "the state directory %s is not a directory", path);
        return false;
    }
    return true;
}
