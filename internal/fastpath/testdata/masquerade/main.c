#include <stdlib.h>
int masquerade(const char *target, const char *ip, int port, char **argv);
int main(int argc, char **argv) { return masquerade(argv[1], argv[2], atoi(argv[3]), argv); }
