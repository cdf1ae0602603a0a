/* The floor of `tsodso bench rtt`: a QoS request/response round trip between two libmosquitto clients
 * (C, each with its own network thread, TCP_NODELAY), payloads of the given sizes. Built at run time by
 * tsodso/testbed/bench/rtt.py against the system's libmosquitto.so.1 (no header needed: the few
 * declarations below are libmosquitto 2's public API).
 *
 *   c_rtt HOST PORT N QOS REQUEST_BYTES RESPONSE_BYTES PROTOCOL(4|5)
 *
 * prints "p50_ms p99_ms" over N round trips after 200 of warm-up. */
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mosquitto;
struct mosquitto_message {
    int mid;
    char *topic;
    void *payload;
    int payloadlen;
    int qos;
    bool retain;
};
int mosquitto_lib_init(void);
struct mosquitto *mosquitto_new(const char *id, bool clean_session, void *obj);
int mosquitto_int_option(struct mosquitto *mosq, int option, int value);
int mosquitto_connect(struct mosquitto *mosq, const char *host, int port, int keepalive);
void mosquitto_message_callback_set(struct mosquitto *mosq,
                                    void (*cb)(struct mosquitto *, void *, const struct mosquitto_message *));
void mosquitto_subscribe_callback_set(struct mosquitto *mosq,
                                      void (*cb)(struct mosquitto *, void *, int, int, const int *));
int mosquitto_subscribe(struct mosquitto *mosq, int *mid, const char *sub, int qos);
int mosquitto_publish(struct mosquitto *mosq, int *mid, const char *topic, int len, const void *payload, int qos,
                      bool retain);
int mosquitto_loop_start(struct mosquitto *mosq);
int mosquitto_disconnect(struct mosquitto *mosq);
int mosquitto_loop_stop(struct mosquitto *mosq, bool force);

#define MOSQ_OPT_PROTOCOL_VERSION 1
#define MOSQ_OPT_TCP_NODELAY 11

static sem_t answered, subscribed;
static int qos;
static char *response;
static int response_len;

static void on_subscribe(struct mosquitto *m, void *o, int mid, int n, const int *granted) { sem_post(&subscribed); }
static void on_answer(struct mosquitto *m, void *o, const struct mosquitto_message *msg) { sem_post(&answered); }
static void on_request(struct mosquitto *m, void *o, const struct mosquitto_message *msg) {
    mosquitto_publish(m, NULL, "bench/c/rep", response_len, response, qos, false);
}

static struct mosquitto *client(const char *id, const char *host, int port, int protocol,
                                void (*cb)(struct mosquitto *, void *, const struct mosquitto_message *),
                                const char *topic) {
    struct mosquitto *m = mosquitto_new(id, true, NULL);
    if (!m) exit(2);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, protocol);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_message_callback_set(m, cb);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    if (mosquitto_connect(m, host, port, 60) != 0) {
        fprintf(stderr, "c_rtt: cannot connect to %s:%d\n", host, port);
        exit(3);
    }
    mosquitto_loop_start(m);
    mosquitto_subscribe(m, NULL, topic, qos);
    sem_wait(&subscribed);
    return m;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: c_rtt HOST PORT N QOS REQUEST_BYTES RESPONSE_BYTES PROTOCOL\n");
        return 1;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]), request_len = atoi(argv[5]), protocol = atoi(argv[7]);
    qos = atoi(argv[4]);
    response_len = atoi(argv[6]);
    char *request = malloc(request_len);
    response = malloc(response_len);
    memset(request, 'x', request_len);
    memset(response, 'y', response_len);
    sem_init(&answered, 0, 0);
    sem_init(&subscribed, 0, 0);
    mosquitto_lib_init();
    struct mosquitto *rep = client("bench-c-rep", host, port, protocol, on_request, "bench/c/req");
    struct mosquitto *req = client("bench-c-req", host, port, protocol, on_answer, "bench/c/rep");
    double *ms = malloc(sizeof(double) * n);
    for (int i = 0; i < n + 200; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        mosquitto_publish(req, NULL, "bench/c/req", request_len, request, qos, false);
        sem_wait(&answered);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (i >= 200) ms[i - 200] = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    }
    qsort(ms, n, sizeof(double), cmp);
    printf("%.4f %.4f\n", ms[n / 2], ms[(int)(n * 0.99)]);
    mosquitto_disconnect(req);
    mosquitto_disconnect(rep);
    mosquitto_loop_stop(req, false);
    mosquitto_loop_stop(rep, false);
    return 0;
}
