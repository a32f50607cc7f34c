/* The tight loop of the optimisation-level study (profiling/levels.sh): a sieve of
 * Eratosthenes over N numbers, ROUNDS times, with a checksum so that no compiler drops it.
 * Usage: sieve [ROUNDS [N]]; prints the number of primes below N and the checksum. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 100;
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    unsigned char *composite = malloc((size_t)n);
    if (!composite) return 1;
    unsigned long long sum = 0;
    long count = 0;
    for (long r = 0; r < rounds; r++) {
        memset(composite, 0, (size_t)n);
        count = 0;
        for (long i = 2; i < n; i++) {
            if (composite[i]) continue;
            count++;
            sum += (unsigned long long)i * (unsigned long long)(r + 1);
            for (long long j = (long long)i * i; j < n; j += i) composite[j] = 1;
        }
    }
    printf("%ld primes below %ld, checksum %llu\n", count, n, sum);
    free(composite);
    return 0;
}
