/* main.c — relay_server: reads the configuration, loads the relay secret, runs the server.
 * Exit status: 0 after a clean stop, 1 when the server cannot start, 2 for a bad option. */
#include <malloc.h>
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "lws_server.h"
#include "resume_token.h"
#include "state_dir.h"

int main(int argc, char **argv)
{
    static struct relay_config config;
    char error[512];
    config_defaults(&config);
    int loaded = config_load(&config, argc, argv, error, sizeof(error));
    if (loaded > 0)
        return 0; /* --help or --version */
    if (loaded < 0) {
        fprintf(stderr, "relay_server: %s\n", error);
        return 2;
    }
    log_init(config.log_format, config.log_level, NULL);
    /* Message fragments (up to 1 MiB) come and go all the time: keep them on the heap and
     * keep freed heap memory for reuse, instead of paying mmap/munmap and page faults for
     * each one. The relay's memory bounds do not depend on it (docs/architecture.md). */
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);

    /* The resume key: --secret-file, else kept in the state directory so that a plain restart
     * (same command line) still accepts every room's resume tokens. A LAN session lives as long
     * as its process and refuses resume: it needs no key on disk. */
    static char secret_path[sizeof(config.state_dir) + sizeof(STATE_SECRET_FILE_NAME) + 1];
    if (config.secret_file[0]) {
        snprintf(secret_path, sizeof(secret_path), "%s", config.secret_file);
    } else if (!config.lan_mode) {
        static char directory[sizeof(config.state_dir)];
        if (!state_dir_resolve(config.state_dir, directory, sizeof(directory), error,
                               sizeof(error)) ||
            !state_dir_create(directory, error, sizeof(error))) {
            fprintf(stderr, "relay_server: %s\n", error);
            return 1;
        }
        snprintf(secret_path, sizeof(secret_path), "%s/%s", directory, STATE_SECRET_FILE_NAME);
    }
    unsigned char secret[RELAY_SECRET_BYTES];
    if (!relay_secret_load(secret_path, secret, error, sizeof(error))) {
        fprintf(stderr, "relay_server: %s\n", error);
        return 1;
    }
    return lws_server_run(&config, secret, sizeof(secret));
}
