/* rfc6455.c — opening-handshake and Close-frame rules lws 4.1 leaves to us (see rfc6455.h). */
#include "rfc6455.h"

#include <string.h>
#include <strings.h>

#include "metrics.h"

#define SUPPORTED_VERSION "13"

/* Whether the comma-separated token list `list` contains `token` (spaces around entries are
 * ignored; tokens compare exactly, as subprotocol names are case-sensitive). */
static bool list_contains(const char *list, const char *token)
{
    size_t length = strlen(token);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t");
        size_t entry = strcspn(p, ",");
        size_t trimmed = entry;
        while (trimmed > 0 && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (trimmed == length && strncmp(p, token, length) == 0)
            return true;
        p += entry + (p[entry] == ',');
    }
    return false;
}

bool rfc6455_check_upgrade(const struct relay_config *config, const char *version,
                           const char *origin, const char *protocols, const char *our_protocol,
                           struct upgrade_refusal *refusal)
{
    static const char *const version_header = "Sec-WebSocket-Version: " SUPPORTED_VERSION;
    if (!config_origin_allowed(config, origin)) {
        *refusal =
            (struct upgrade_refusal){403, "Forbidden", "Origin not allowed", NULL, REJECT_ORIGIN};
        return false;
    }
    if (!version || !*version) {
        *refusal = (struct upgrade_refusal){400, "Bad Request", "Missing Sec-WebSocket-Version",
                                            version_header, REJECT_BAD_HANDSHAKE};
        return false;
    }
    if (strcmp(version, SUPPORTED_VERSION) != 0) {
        *refusal =
            (struct upgrade_refusal){426, "Upgrade Required", "Unsupported Sec-WebSocket-Version",
                                     version_header, REJECT_BAD_HANDSHAKE};
        return false;
    }
    if (protocols && *protocols && !list_contains(protocols, our_protocol)) {
        *refusal = (struct upgrade_refusal){
            400, "Bad Request",
            "Unsupported Sec-WebSocket-Protocol: this relay speaks no subprotocol; connect "
            "without offering one",
            NULL, REJECT_BAD_HANDSHAKE};
        return false;
    }
    return true;
}

bool rfc6455_close_payload_valid(size_t length)
{
    return length != 1;
}
