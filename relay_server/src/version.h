/* version.h — the relay's version, printed by --version and reported in logs and /health.
 * One definition so that the binary, its help text and the packaging agree. */
#ifndef RELAY_VERSION_H
#define RELAY_VERSION_H

#define RELAY_VERSION "0.1.0"

#endif
