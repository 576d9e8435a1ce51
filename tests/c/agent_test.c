/*
 * agent_test.c - the guest agent (src/pvpatch/_core/agent.c) without Python: a real hint page
 * written by this program with the publication protocol of docs/hints.md (pwrite, seqcount,
 * generation, shared futex wake), the agent's real thread following it, and an apply function
 * that records what it was asked to do.
 *
 * Checks: the policy's rules with an injected clock (dwell, settle, the judge's hysteresis);
 * the page validation and the trust rule; then, live: the first decision, a switch per
 * publication with its publication->done latency recorded from changed_ns, the dwell holding a
 * flip back, fallback to the safe variant on a garbage page and on an untrusted (mode 0666)
 * page and back when repaired, a refused apply retried until it succeeds, and the local judge
 * vetoing the fast variant only after its verdict has held.
 *
 * Every wait is bounded: a condition not reached in time is a failure that prints the agent's
 * state and its switch records.  Exit status 0 and a last line "agent_test: ok" on success.
 *
 *   gcc -O2 -pthread -Isrc/pvpatch/_core tests/c/agent_test.c src/pvpatch/_core/agent.c -lm
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
static char dir[256], path[300];

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            failures++;                                                                         \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                              \
            printf(__VA_ARGS__);                                                                \
            printf("\n");                                                                       \
            fflush(stdout);                                                                     \
        }                                                                                       \
    } while (0)

/* ---- a publisher (the protocol of shm.publish) ------------------------------------------- */

static int pfd = -1;
static void *pmap;
static struct pvagent_page page;

static void pw(const void *buf, size_t n, off_t off)
{
    if (pwrite(pfd, buf, n, off) != (ssize_t)n) {
        perror("pwrite");
        exit(2);
    }
}

/* 1. seqcount odd; 2. every field but seqcount and generation; 3. generation (when it moves);
 * 4. seqcount even; 5. FUTEX_WAKE on the generation (shared: other processes may wait). */
static void publish(uint64_t hints, int move)
{
    uint64_t now = pvagent_now_ns();
    page.heartbeat_ns = now;
    page.publications++;
    if (move) {
        page.changed_ns = now;
        page.generation++;
    }
    page.active_hints = hints;
    page.ever_hints |= hints;
    page.reason = hints ? 1 : 2;
    uint32_t odd = page.seqcount + 1, even = page.seqcount + 2;
    pw(&odd, 4, PVAGENT_OFF_SEQCOUNT);
    pw(&page, PVAGENT_OFF_SEQCOUNT, 0);
    pw((char *)&page + PVAGENT_OFF_GENERATION + 4, sizeof(page) - PVAGENT_OFF_GENERATION - 4,
       PVAGENT_OFF_GENERATION + 4);
    if (move)
        pw(&page.generation, 4, PVAGENT_OFF_GENERATION);
    pw(&even, 4, PVAGENT_OFF_SEQCOUNT);
    page.seqcount = even;
    if (move)
        syscall(SYS_futex, (char *)pmap + PVAGENT_OFF_GENERATION, FUTEX_WAKE, INT_MAX, NULL,
                NULL, 0);
}

static void wake_guests(void)
{
    syscall(SYS_futex, (char *)pmap + PVAGENT_OFF_GENERATION, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void open_page(void)
{
    pfd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (pfd < 0 || fchmod(pfd, 0644) != 0 || ftruncate(pfd, PVAGENT_FILE_SIZE) != 0) {
        perror(path);
        exit(2);
    }
    pmap = mmap(NULL, PVAGENT_FILE_SIZE, PROT_READ, MAP_SHARED, pfd, 0);
    if (pmap == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(&page, 0, sizeof(page));
    page.magic = PVAGENT_MAGIC;
    page.version = PVAGENT_VERSION;
    page.state = PVAGENT_STATE_RUNNING;
    page.size = PVAGENT_SIZE_V1;
    page.publisher_pid = (uint32_t)getpid();
    page.features = 3;
    page.interval_ns = 10000000000ull; /* 10 s: stale only after 30 s */
    page.started_ns = pvagent_now_ns();
    page.online_cpus = 2;
    page.runnable = page.steal = page.psi_some_avg10 = PVAGENT_UNKNOWN;
    page.cg_quota_mcpu = page.cg_throttled = PVAGENT_UNKNOWN;
}

/* ---- the agent's apply and judge --------------------------------------------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char in_force[16] = "";
static atomic_int refuse;   /* refuse this many applies */
static atomic_int applies;
static atomic_int judge_verdict = -1;
static atomic_int judge_calls;

static int apply(const char *group, const char *variant, void *arg, struct pvrt_error *e)
{
    atomic_fetch_add(&applies, 1);
    if (strcmp(group, "lock") != 0) {
        snprintf(e->msg, sizeof(e->msg), "unknown group %s", group);
        return -1;
    }
    if (atomic_load(&refuse) > 0) {
        atomic_fetch_sub(&refuse, 1);
        snprintf(e->msg, sizeof(e->msg), "test: refused");
        return -1;
    }
    pthread_mutex_lock(&mu);
    snprintf(in_force, sizeof(in_force), "%s", variant);
    pthread_mutex_unlock(&mu);
    return 0;
}

static int judge(void *arg, char *why, size_t n)
{
    atomic_fetch_add(&judge_calls, 1);
    int v = atomic_load(&judge_verdict);
    snprintf(why, n, "test verdict %d", v);
    return v;
}

static int is(const char *variant)
{
    pthread_mutex_lock(&mu);
    int r = strcmp(in_force, variant) == 0;
    pthread_mutex_unlock(&mu);
    return r;
}

static void dump(const char *what)
{
    struct pvagent_stats st;
    pvagent_stats_read(&st);
    printf("  state while waiting for %s: in force '%s', mode %d, page %s, observations %llu, "
           "decisions %llu, switches %llu, failures %llu\n",
           what, in_force, st.mode, pvagent_status_name(st.status), st.observations,
           st.decisions, st.switches, st.failures);
    struct pvagent_switch s[64];
    size_t n = pvagent_switches(s, 64);
    for (size_t i = 0; i < n && i < 64; i++)
        printf("  switch %zu: %s -> %s ok %d attempt %u gen %u reason '%s' error '%s'\n", i,
               s[i].from, s[i].to, s[i].ok, s[i].attempt, s[i].generation, s[i].reason,
               s[i].error);
}

/* Wait at most `s` seconds for variant to be in force; a failure dumps the state. */
static int wait_for(const char *variant, double s, const char *what)
{
    double end = pvagent_now_ns() / 1e9 + s;
    while (pvagent_now_ns() / 1e9 < end) {
        if (is(variant))
            return 1;
        usleep(1000);
    }
    failures++;
    printf("FAIL: %s: '%s' not in force within %.1f s\n", what, variant, s);
    dump(what);
    return 0;
}

static size_t nswitches(void)
{
    struct pvagent_stats st;
    pvagent_stats_read(&st);
    return st.records;
}

static struct pvagent_switch last_switch(void)
{
    static struct pvagent_switch s[PVAGENT_MAX_SWITCHES];
    size_t n = pvagent_switches(s, PVAGENT_MAX_SWITCHES);
    struct pvagent_switch z = {0};
    return n ? s[(n < PVAGENT_MAX_SWITCHES ? n : PVAGENT_MAX_SWITCHES) - 1] : z;
}

/* ---- pure checks ------------------------------------------------------------------------- */

static struct pvagent_input input(int usable, int realtime)
{
    struct pvagent_input in = {usable, usable ? "" : "missing", realtime ? 1 : 0, 1, 2, -2, NULL};
    return in;
}

static void test_policy(void)
{
    struct pvagent_policy p;
    struct pvrt_error e = {0};
    CHECK(pvagent_policy_init(&p, -1, 0, 0, &e) == -1 && strstr(e.msg, "min_dwell_s"),
          "negative dwell refused: %s", e.msg);
    CHECK(pvagent_policy_init(&p, NAN, 0, 0, &e) == -1, "NaN dwell refused");
    double due;
    pvagent_policy_init(&p, 2.0, 0, 1.0, &e);
    CHECK(!pvagent_policy_deadline(&p, &due) && !pvagent_policy_poll(&p, 100),
          "nothing decided before the first observation");
    struct pvagent_input rt = input(1, 1), no = input(1, 0), none = input(0, 0);
    CHECK(pvagent_policy_observe(&p, &rt, 100) && p.mode == PVAGENT_MODE_FAST,
          "first observation decides at once");
    CHECK(!pvagent_policy_observe(&p, &no, 100.5), "dwell holds back");
    CHECK(pvagent_policy_deadline(&p, &due) && fabs(due - 102.0) < 1e-9, "deadline %f", due);
    CHECK(!pvagent_policy_poll(&p, 101.9), "not yet due");
    CHECK(pvagent_policy_poll(&p, 102.0) && p.mode == PVAGENT_MODE_SAFE, "taken when due");
    CHECK(strstr(p.why, "REALTIME not given (publisher: undersubscribed)") != NULL, "why %s",
          p.why);
    CHECK(pvagent_policy_observe(&p, &none, 105) == 0 && strstr(p.why, "no hints: missing"),
          "no page: safe, already in force: %s", p.why);
    struct pvagent_input one = rt;
    one.cpus = 1;
    pvagent_policy_observe(&p, &one, 110);
    CHECK(p.mode == PVAGENT_MODE_SAFE && strstr(p.why, "1 CPU"), "one CPU: safe (%s)", p.why);

    /* settle delays only the fast direction */
    pvagent_policy_init(&p, 0, 1.0, 1.0, &e);
    CHECK(pvagent_policy_observe(&p, &no, 0) && p.mode == PVAGENT_MODE_SAFE, "safe first");
    CHECK(!pvagent_policy_observe(&p, &rt, 0.1) && !pvagent_policy_observe(&p, &rt, 0.6),
          "settling");
    CHECK(pvagent_policy_poll(&p, 1.1) && p.mode == PVAGENT_MODE_FAST, "settled");
    CHECK(pvagent_policy_observe(&p, &no, 1.11) && p.mode == PVAGENT_MODE_SAFE,
          "the safe direction does not settle");

    /* the judge: a verdict changes the policy only after holding judge_hold_s */
    pvagent_policy_init(&p, 0, 0, 1.0, &e);
    struct pvagent_input j = rt;
    CHECK(pvagent_policy_observe(&p, &j, 0) && p.mode == PVAGENT_MODE_FAST, "fast");
    j.judge = 0;
    j.judge_why = "contended";
    CHECK(!pvagent_policy_observe(&p, &j, 0.1), "one 'prefer safe' sample is not enough");
    j.judge = -2;
    CHECK(!pvagent_policy_observe(&p, &j, 0.5), "no new sample: nothing changes");
    j.judge = 0;
    CHECK(!pvagent_policy_observe(&p, &j, 0.9), "held 0.8 s of 1.0");
    CHECK(pvagent_policy_observe(&p, &j, 1.1) && p.mode == PVAGENT_MODE_SAFE &&
              strstr(p.why, "local judge prefers the safe variant (contended)"),
          "held 1.0 s: safe (%s)", p.why);
    j.judge = 1;
    CHECK(!pvagent_policy_observe(&p, &j, 1.2), "the way back holds too");
    j.judge = -1;
    CHECK(!pvagent_policy_observe(&p, &j, 1.7), "no opinion interrupts the run");
    j.judge = 1;
    CHECK(!pvagent_policy_observe(&p, &j, 2.0) && !pvagent_policy_observe(&p, &j, 2.9),
          "a new run starts at 2.0");
    CHECK(pvagent_policy_observe(&p, &j, 3.0) && p.mode == PVAGENT_MODE_FAST, "fast again");
    /* the judge cannot grant the fast variant without REALTIME */
    j = no;
    j.judge = 1;
    CHECK(pvagent_policy_observe(&p, &j, 3.1) && p.mode == PVAGENT_MODE_SAFE,
          "no REALTIME: safe whatever the judge");
}

static void test_page_rules(void)
{
    struct pvagent_page p;
    memset(&p, 0, sizeof(p));
    p.magic = PVAGENT_MAGIC;
    p.version = 1;
    p.state = 1;
    p.size = PVAGENT_SIZE_V1;
    p.publisher_pid = 1;
    p.interval_ns = 1000000000ull;
    uint64_t now = pvagent_now_ns();
    p.started_ns = p.changed_ns = p.heartbeat_ns = now;
    p.online_cpus = 2;
    p.steal = p.psi_some_avg10 = p.cg_throttled = PVAGENT_UNKNOWN;
    char f[32], pr[256];
    CHECK(pvagent_page_validate(&p, 4096, now, f, sizeof(f), pr, sizeof(pr)) == 0, "good: %s",
          pr);
    static const char *const fields[] = {
        "magic", "version", "size", "seqcount", "state", "publisher_pid", "active_hints",
        "interval_ns", "heartbeat_ns", "changed_ns", "reason", "online_cpus", "steal",
        "psi_some_avg10", "cg_throttled"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        struct pvagent_page q = p;
        switch (i) { /* one field out of its range, as abi.validate's tests do */
        case 0: q.magic = 0xdeadbeef; break;
        case 1: q.version = 2; break;
        case 2: q.size = 100; break;
        case 3: q.seqcount = 5; break;
        case 4: q.state = 9; break;
        case 5: q.publisher_pid = 0; break;
        case 6: q.active_hints = 1; break;
        case 7: q.interval_ns = 10; break;
        case 8: q.heartbeat_ns += 3600000000000ull; break;
        case 9: q.changed_ns = q.heartbeat_ns + 1; break;
        case 10: q.reason = 99; break;
        case 11: q.online_cpus = 0; break;
        case 12: q.steal = 10001; break;
        case 13: q.psi_some_avg10 = 20000; break;
        case 14: q.cg_throttled = 12345; break;
        }
        int rc = pvagent_page_validate(&q, 4096, now, f, sizeof(f), pr, sizeof(pr));
        CHECK(rc == -1 && strcmp(f, fields[i]) == 0, "%s: rc %d field %s (%s)", fields[i], rc,
              f, pr);
    }
    struct pvagent_page q = p;
    q.state = PVAGENT_STATE_STOPPED;
    q.active_hints = q.ever_hints = 1;
    CHECK(pvagent_page_validate(&q, 4096, now, f, sizeof(f), pr, sizeof(pr)) == -1 &&
              strstr(pr, "stopped"),
          "a stopped page carries no hints");
    CHECK(pvagent_page_validate(&p, 100, now, f, sizeof(f), pr, sizeof(pr)) == -1 &&
              strcmp(f, "size") == 0,
          "beyond the file");

    struct stat st;
    memset(&st, 0, sizeof(st));
    uint32_t trusted[] = {0, 1000};
    char why[256];
    st.st_mode = S_IFREG | 0644;
    st.st_uid = 0;
    CHECK(pvagent_trust_problem(&st, trusted, 2, why, sizeof(why)) == 0, "root 0644: %s", why);
    st.st_uid = 65534;
    CHECK(pvagent_trust_problem(&st, trusted, 2, why, sizeof(why)) == -1 &&
              strcmp(why, "untrusted: owned by uid 65534, not by root or uid 1000") == 0,
          "nobody's page: %s", why);
    st.st_uid = 1000;
    st.st_mode = S_IFREG | 0664;
    CHECK(pvagent_trust_problem(&st, trusted, 2, why, sizeof(why)) == -1 &&
              strstr(why, "writable by group or others (mode 0o664)"),
          "group-writable: %s", why);
    st.st_mode = S_IFDIR | 0755;
    CHECK(pvagent_trust_problem(&st, trusted, 2, why, sizeof(why)) == -1 &&
              strcmp(why, "not a regular file") == 0,
          "a directory: %s", why);
}

/* ---- live ---------------------------------------------------------------------------------- */

static void test_live(void)
{
    open_page();
    publish(PVAGENT_HINT_REALTIME, 1);
    struct pvagent_config c = {
        .hints_path = path,
        .min_dwell_s = 0.3,
        .poll_s = 0.05,
        .group = "lock",
        .fast = "native",
        .safe = "pv",
        .apply = apply,
        .local_judge = judge,
        .judge_period_s = 0.02,
        .judge_hold_s = 0.2,
        .retry_initial_s = 0.02,
        .retry_max_s = 0.1,
    };
    struct pvrt_error e = {0};
    struct pvagent_config bad = c;
    bad.fast = "pv";
    CHECK(pvagent_start(&bad, &e) == -1 && strstr(e.msg, "both 'pv'"), "same variants: %s",
          e.msg);
    bad = c;
    bad.poll_s = 0;
    CHECK(pvagent_start(&bad, &e) == -1 && strstr(e.msg, "poll_s"), "poll_s 0: %s", e.msg);
    if (pvagent_start(&c, &e) != 0) {
        printf("FAIL: pvagent_start: %s (%s errno %d)\n", e.msg, e.syscall, e.err);
        failures++;
        return;
    }
    CHECK(pvagent_start(&c, &e) == -1 && strstr(e.msg, "already running"), "second start");

    /* 1. the first observation decides at once: REALTIME -> native */
    wait_for("native", 5, "the first decision");
    struct pvagent_switch s = last_switch();
    CHECK(s.ok && s.attempt == 1 && strcmp(s.from, "") == 0 && strcmp(s.to, "native") == 0,
          "first switch %s -> %s", s.from, s.to);

    /* 2. a publication that withdraws REALTIME: after the dwell, pv; latency from changed_ns */
    usleep(350000);
    publish(0, 1);
    double published = page.changed_ns / 1e9;
    wait_for("pv", 5, "REALTIME withdrawn");
    s = last_switch();
    CHECK(s.ok && fabs(s.t_publish - published) < 1e-6 && s.generation == page.generation,
          "recorded from the publication: t_publish %.9f changed %.9f gen %u/%u", s.t_publish,
          published, s.generation, page.generation);
    CHECK(s.t_publish <= s.t_seen && s.t_seen <= s.t_decided && s.t_decided <= s.t_done,
          "times in order %.9f %.9f %.9f %.9f", s.t_publish, s.t_seen, s.t_decided, s.t_done);
    CHECK(strcmp(s.from, "native") == 0 && strstr(s.reason, "REALTIME not given"), "%s / %s",
          s.from, s.reason);

    /* 3. the dwell: a flip right after a switch waits until min_dwell_s has passed */
    double t_pv = s.t_done;
    publish(PVAGENT_HINT_REALTIME, 1);
    wait_for("native", 5, "REALTIME again");
    s = last_switch();
    CHECK(s.t_decided - t_pv >= 0.3 - 0.01, "held back by the dwell: %.3f s after the last",
          s.t_decided - t_pv);

    /* 4. a garbage page: the safe default; a repaired one: back */
    usleep(350000);
    uint32_t junk = 0xdeadbeef;
    pw(&junk, 4, 0);
    wake_guests();
    wait_for("pv", 5, "a garbage page");
    s = last_switch();
    CHECK(strstr(s.reason, "no hints: hint page: magic") && s.t_publish == 0,
          "fallback reason '%s', no publication (t_publish %f)", s.reason, s.t_publish);
    usleep(350000);
    publish(PVAGENT_HINT_REALTIME, 1); /* rewrites the magic */
    wait_for("native", 5, "a repaired page");

    /* 5. an untrusted page (writable by others): the safe default, whatever it says */
    usleep(350000);
    fchmod(pfd, 0666);
    wake_guests();
    wait_for("pv", 5, "an untrusted page");
    s = last_switch();
    CHECK(strstr(s.reason, "untrusted: writable by group or others"), "reason '%s'", s.reason);
    usleep(350000);
    publish(PVAGENT_HINT_REALTIME, 0); /* a heartbeat only, while the page is untrusted */
    uint64_t fresh = page.heartbeat_ns;
    fchmod(pfd, 0644); /* the first fresh page the agent can see: the latency counts from it */
    wake_guests();
    wait_for("native", 5, "trusted again");
    s = last_switch();
    CHECK(fabs(s.t_publish - fresh / 1e9) < 1e-6,
          "after a gap the cause is the first fresh page: %.9f vs %.9f", s.t_publish,
          fresh / 1e9);

    /* 6. a refused apply is retried with backoff until it succeeds */
    usleep(350000);
    size_t n0 = nswitches();
    atomic_store(&refuse, 3);
    publish(0, 1);
    wait_for("pv", 5, "a refused switch retried");
    struct pvagent_switch rec[PVAGENT_MAX_SWITCHES];
    size_t n = pvagent_switches(rec, PVAGENT_MAX_SWITCHES);
    CHECK(n == nswitches() && n - n0 == 4, "3 refusals and a success: %zu records", n - n0);
    for (size_t i = n0; i < n && n - n0 == 4; i++)
        CHECK(rec[i].attempt == i - n0 + 1 && rec[i].ok == (i == n - 1) &&
                  (rec[i].ok || strcmp(rec[i].error, "test: refused") == 0) &&
                  rec[i].generation == page.generation,
              "attempt %u ok %d error '%s'", rec[i].attempt, rec[i].ok, rec[i].error);

    /* 7. the judge vetoes the fast variant only after its verdict held 0.2 s */
    publish(PVAGENT_HINT_REALTIME, 1);
    wait_for("native", 5, "REALTIME before the judge");
    double t0 = pvagent_now_ns() / 1e9;
    atomic_store(&judge_verdict, 0);
    wait_for("pv", 5, "the judge preferring pv");
    s = last_switch();
    CHECK(s.t_decided - t0 >= 0.2 - 0.03 && strstr(s.reason, "local judge"),
          "after %.3f s: %s", s.t_decided - t0, s.reason);
    CHECK(atomic_load(&judge_calls) > 5, "judge sampled %d times", atomic_load(&judge_calls));
    atomic_store(&judge_verdict, 1);
    wait_for("native", 5, "the judge content again");

    /* 8. a stopped publisher: safe at once */
    usleep(350000);
    page.state = PVAGENT_STATE_STOPPED;
    publish(0, 1);
    wait_for("pv", 5, "a stopped publisher");
    s = last_switch();
    CHECK(strstr(s.reason, "stopped") && s.t_publish > 0, "stop is a publication: %s",
          s.reason);

    /* 9. fork with the agent running: the child forgets the parent's agent and starts its
     * own, which decides from the page as the parent's did */
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20); /* a hang in the child is a failure, not a stuck test */
        pvagent_atfork_child();
        snprintf(in_force, sizeof(in_force), "%s", "");
        int ok = pvagent_start(&c, &e) == 0 && wait_for("pv", 5, "the child's agent");
        pvagent_stop();
        _exit(ok && failures == 0 ? 0 : 1);
    }
    int status = -1;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "fork child: status %#x", status);

    struct pvagent_stats st;
    pvagent_stats_read(&st);
    printf("agent_test: %zu switch records, %llu observations, %llu wake-ups, %d applies\n",
           nswitches(), st.observations, st.wakeups, atomic_load(&applies));
    double t_stop = pvagent_now_ns() / 1e9;
    pvagent_stop();
    CHECK(pvagent_now_ns() / 1e9 - t_stop < 1.0, "stop is prompt: %.3f s",
          pvagent_now_ns() / 1e9 - t_stop);
    pvagent_stop(); /* idempotent */
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/pvpatch-agent-test.XXXXXX");
    if (mkdtemp(dir) == NULL || chmod(dir, 0755) != 0) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/hints", dir);
    test_policy();
    test_page_rules();
    test_live();
    unlink(path);
    rmdir(dir);
    if (failures) {
        printf("agent_test: %d failure(s)\n", failures);
        return 1;
    }
    printf("agent_test: ok\n");
    return 0;
}
