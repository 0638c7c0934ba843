/* address_key.c — an address's key for per-address limits: IPv4 as is, IPv6 reduced to /64. */
#include "address_key.h"

#include <arpa/inet.h>
#include <string.h>

void address_key(const char *address, char key[ADDRESS_KEY_SIZE])
{
    struct in6_addr v6;
    if (inet_pton(AF_INET6, address, &v6) == 1 && !IN6_IS_ADDR_V4MAPPED(&v6)) {
        memset(v6.s6_addr + 8, 0, 8);
        inet_ntop(AF_INET6, &v6, key, ADDRESS_KEY_SIZE);
        return;
    }
    strncpy(key, address, ADDRESS_KEY_SIZE - 1);
    key[ADDRESS_KEY_SIZE - 1] = '\0';
}
