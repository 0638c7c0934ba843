/* address_key.h — how the relay groups client addresses for its per-address limits: an IPv4
 * address stands for itself, an IPv6 address for its /64, since one host or one home usually
 * owns a whole /64 and could otherwise take a fresh address for every attempt. */
#ifndef ADDRESS_KEY_H
#define ADDRESS_KEY_H

#define ADDRESS_KEY_SIZE 64

/* Writes the key of `address` (a textual IPv4 or IPv6 address; anything else is kept as is,
 * cut to fit) into `key`. IPv4-mapped IPv6 addresses are IPv4 hosts and are not grouped. */
void address_key(const char *address, char key[ADDRESS_KEY_SIZE]);

#endif
