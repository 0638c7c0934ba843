/* state_dir.h — where the relay keeps what must survive a restart (its resume secret) when no
 * --secret-file is given: --state-dir, else systemd's $STATE_DIRECTORY, else the per-user
 * $XDG_STATE_HOME/segmentation-suite-relay (default ~/.local/state/segmentation-suite-relay). */
#ifndef STATE_DIR_H
#define STATE_DIR_H

#include <stdbool.h>
#include <stddef.h>

#define STATE_DIR_NAME "segmentation-suite-relay"
#define STATE_SECRET_FILE_NAME "resume.key"

/* The state directory: `configured` if not empty, else from the environment as above. False
 * (and a message) when none can be found (no HOME) or the path does not fit. */
bool state_dir_resolve(const char *configured, char *out, size_t size, char *error,
                       size_t error_size);

/* Creates `path` and its missing parents (mode 0700: the directory holds a key). */
bool state_dir_create(const char *path, char *error, size_t error_size);

#endif
