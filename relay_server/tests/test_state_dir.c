/* test_state_dir.c — where the resume key lives without --secret-file: the order of --state-dir,
 * $STATE_DIRECTORY, $XDG_STATE_HOME and ~/.local/state, the directory created 0700 with its
 * parents, and a key created there once and found again by the next start. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "resume_token.h"
#include "state_dir.h"
#include "unit.h"

static char scratch[64];

static int make_scratch(void **state)
{
    snprintf(scratch, sizeof scratch, "/tmp/relay-state-test-XXXXXX");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state)
{
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", scratch);
    return system(command) == 0 ? 0 : -1;
}

/* Sets or clears (NULL) the environment the resolution reads. */
static void environment(const char *systemd, const char *xdg, const char *home)
{
    const char *names[] = {"STATE_DIRECTORY", "XDG_STATE_HOME", "HOME"};
    const char *values[] = {systemd, xdg, home};
    for (int i = 0; i < 3; i++) {
        if (values[i])
            setenv(names[i], values[i], 1);
        else
            unsetenv(names[i]);
    }
}

static void test_resolution_order(void **state)
{
    char saved_home[512] = "";
    if (getenv("HOME"))
        snprintf(saved_home, sizeof saved_home, "%s", getenv("HOME"));
    char path[4096], error[256];
    environment("/var/lib/relay_server:/var/lib/other", "/x/state", "/home/u");
    assert_true(state_dir_resolve("/given", path, sizeof path, error, sizeof error));
    assert_string_equal(path, "/given");
    assert_true(state_dir_resolve("", path, sizeof path, error, sizeof error));
    assert_string_equal(path, "/var/lib/relay_server");
    environment(NULL, "/x/state", "/home/u");
    assert_true(state_dir_resolve(NULL, path, sizeof path, error, sizeof error));
    assert_string_equal(path, "/x/state/segmentation-suite-relay");
    environment(NULL, "relative", "/home/u"); /* ignored, as the XDG spec says */
    assert_true(state_dir_resolve("", path, sizeof path, error, sizeof error));
    assert_string_equal(path, "/home/u/.local/state/segmentation-suite-relay");
    environment(NULL, NULL, NULL);
    assert_false(state_dir_resolve("", path, sizeof path, error, sizeof error));
    assert_non_null(strstr(error, "--state-dir"));
    char tiny[8];
    assert_false(state_dir_resolve("/a/long/path", tiny, sizeof tiny, error, sizeof error));
    if (saved_home[0])
        setenv("HOME", saved_home, 1);
}

static void test_directory_created_private_with_parents_and_key_kept(void **state)
{
    char directory[256], key_path[300], error[256];
    snprintf(directory, sizeof directory, "%s/a/b/segmentation-suite-relay", scratch);
    assert_true(state_dir_create(directory, error, sizeof error));
    struct stat info;
    assert_int_equal(stat(directory, &info), 0);
    assert_true(S_ISDIR(info.st_mode));
    assert_int_equal(info.st_mode & 0777, 0700);
    assert_true(state_dir_create(directory, error, sizeof error)); /* exists: fine */

    /* First start: a key is made; the next start reads the same key. */
    snprintf(key_path, sizeof key_path, "%s/%s", directory, STATE_SECRET_FILE_NAME);
    unsigned char first[RELAY_SECRET_BYTES], second[RELAY_SECRET_BYTES];
    assert_true(relay_secret_load(key_path, first, error, sizeof error));
    assert_true(relay_secret_load(key_path, second, error, sizeof error));
    assert_memory_equal(first, second, RELAY_SECRET_BYTES);
    assert_int_equal(stat(key_path, &info), 0);
    assert_int_equal(info.st_mode & 0777, 0600);
    /* Only the key is left behind, no temporary file. */
    DIR *listing = opendir(directory);
    assert_non_null(listing);
    int entries = 0;
    for (struct dirent *entry; (entry = readdir(listing));)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, ".."))
            entries++;
    closedir(listing);
    assert_int_equal(entries, 1);

    /* A file where the directory should be is an error, not a crash. */
    char blocked[300];
    snprintf(blocked, sizeof blocked, "%s/%s/sub", directory, STATE_SECRET_FILE_NAME);
    assert_false(state_dir_create(blocked, error, sizeof error));
    assert_non_null(strstr(error, "state directory"));
}

int run_state_dir_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolution_order),
        cmocka_unit_test(test_directory_created_private_with_parents_and_key_kept),
    };
    return UNIT_RUN_GROUP("state_dir", tests, make_scratch, remove_scratch, test_count);
}
