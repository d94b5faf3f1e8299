#!/usr/bin/env python3
"""Start and cancel throttled migrations of one built-in guest, over and over,
until its guest fails (triple fault, ledger MISMATCH, no LEDGER OK for 30 s,
ringvm gone) or RUNS migrations have been cancelled.

    scripts/cancel-stress.py [--build DIR] [--runs N] [--seed S] [--out DIR] [--trace]
    scripts/nested-kvm.sh [--cpus 2] -- python3 scripts/cancel-stress.py --trace

Each run starts a destination (`ringvm --incoming unix:`), migrates a 64 MiB
ledger guest to it with auto-converge or dirty-limit at 4 or 64 MiB/s, the
source held from switching over (RINGVM_FAULT_INJECT=no-switch-over), and
cancels it at a seeded random moment 0.2-2.5 s in. The source's guest must
go on verifying its memory through all of it.

Written to find out (docs/testing.md, "The emulator's own failures") why the
built-in guest triple-faulted under make test-nested: with --trace (root,
tracefs) the KVM tracepoints kvm_exit, kvm_page_fault, kvm_inj_exception and
kvm_userspace_exit run into a ring buffer that is copied to OUT/trace.txt
when the guest fails. Exit status 0 when no run failed, 1 when one did.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

TRACEFS = '/sys/kernel/tracing'
TRACE_EVENTS = ('kvm_exit', 'kvm_page_fault', 'kvm_inj_exception', 'kvm_userspace_exit')
WORKLOAD = 'ledger,wss=8M,verify=1'


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--build', default=os.environ.get('RINGVM_BUILD_DIR', os.path.join(here, 'build')),
                        help='build directory with ringvm and ringctl [$RINGVM_BUILD_DIR or ./build]')
    parser.add_argument('--runs', type=int, default=400, help='migrations to start and cancel [400]')
    parser.add_argument('--seed', type=int, default=7, help='seed of the cancel moments [7]')
    parser.add_argument('--out', default=None, help='logs (and trace.txt) go here [a new temporary directory]')
    parser.add_argument('--trace', action='store_true', help='KVM tracepoints into a ring buffer (root)')
    args = parser.parse_args()
    for program in ('ringvm', 'ringctl'):
        if not os.access(os.path.join(args.build, program), os.X_OK):
            sys.exit('cancel-stress: %s/%s not found (make all first)' % (args.build, program))
    if not os.path.exists('/dev/kvm'):
        sys.exit('cancel-stress: no /dev/kvm here (scripts/nested-kvm.sh runs it inside an emulated machine)')
    out = args.out or tempfile.mkdtemp(prefix='cancel-stress.')
    os.makedirs(out, exist_ok=True)
    # Unix sockets cannot live on nested-kvm.sh's 9p root: a tmpfs there.
    sockets = tempfile.mkdtemp(prefix='cancel-stress-sockets.')
    if os.environ.get('RINGVM_NESTED_KVM') == '1':
        subprocess.run(['mount', '-t', 'tmpfs', 'none', sockets], check=True)
    print('cancel-stress: logs in %s' % out, flush=True)

    def tracefs_write(name, value):
        with open(os.path.join(TRACEFS, name), 'w') as f:
            f.write(value)

    if args.trace:
        if not os.path.exists(os.path.join(TRACEFS, 'trace')):
            subprocess.run(['mount', '-t', 'tracefs', 'none', TRACEFS], check=True)
        tracefs_write('tracing_on', '0')
        tracefs_write('trace', '')
        tracefs_write('buffer_size_kb', '40000')
        for event in TRACE_EVENTS:
            tracefs_write('events/kvm/%s/enable' % event, '1')
        tracefs_write('tracing_on', '1')

    ringvm = os.path.join(args.build, 'ringvm')
    source_log_path = os.path.join(out, 'source.log')
    source_socket = os.path.join(sockets, 'source.sock')
    environment = dict(os.environ, RINGVM_FAULT_INJECT='no-switch-over',
                       RINGVM_FAULT_RELEASE=os.path.join(sockets, 'release'))
    source = subprocess.Popen([ringvm, '--memory', '64M', '--workload', WORKLOAD, '--api-socket', source_socket],
                              env=environment, stdout=open(source_log_path, 'w'), stderr=subprocess.STDOUT)

    def source_log():
        with open(source_log_path) as f:
            return f.read()

    def guest_failed():
        text = source_log()
        return 'triple fault' in text or 'MISMATCH' in text or source.poll() is not None

    def fail(why):
        if args.trace:
            tracefs_write('tracing_on', '0')
            shutil.copy(os.path.join(TRACEFS, 'trace'), os.path.join(out, 'trace.txt'))
        print('cancel-stress: FAILED: %s\n--- source log (tail) ---\n%s' % (why, source_log()[-4000:]), flush=True)
        if source.poll() is None:
            source.kill()
        sys.exit(1)

    def wait_for(condition, seconds, what):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            if guest_failed():
                fail('the source guest failed while waiting for %s' % what)
            time.sleep(0.05)
        fail('timed out after %d s waiting for %s' % (seconds, what))

    def ringctl(*arguments, check=True):
        return subprocess.run([os.path.join(args.build, 'ringctl'), '-s', source_socket, *arguments],
                              capture_output=True, text=True, check=check)

    def migration_ended():
        reply = ringctl('--json', 'progress', check=False)
        try:
            return json.loads(reply.stdout).get('phase') == 'done'
        except ValueError:
            return False

    wait_for(lambda: 'LEDGER OK' in source_log(), 60, 'the first LEDGER OK')
    random.seed(args.seed)
    started = time.monotonic()
    # The ledger verifies its memory about once a second: 30 s without a
    # new LEDGER OK is a guest that stopped, whatever it printed.
    ledger_seen, ledger_seen_at = 0, started
    migration_socket = os.path.join(sockets, 'migration.sock')
    for run in range(args.runs):
        if os.path.exists(migration_socket):
            os.unlink(migration_socket)
        destination = subprocess.Popen([ringvm, '--memory', '64M', '--workload', WORKLOAD,
                                        '--api-socket', os.path.join(sockets, 'destination.sock'),
                                        '--incoming', 'unix:' + migration_socket],
                                       stdout=open(os.path.join(out, 'destination.log'), 'w'),
                                       stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(migration_socket), 30, 'the destination to listen')
        converge = 'auto' if run % 2 else 'dirty-limit'
        bandwidth = '4' if (run // 2) % 2 == 0 else '64'
        ringctl('migrate', 'unix:' + migration_socket, '--dispatch', '--downtime-ms', '1', '--converge', converge,
                '--max-bandwidth', bandwidth, '--timeout', '120')
        time.sleep(random.uniform(0.2, 2.5))    # the random moment, not a synchronisation
        ringctl('cancel', check=False)
        wait_for(migration_ended, 60, 'run %d\'s cancel to end the migration' % run)
        try:
            destination.wait(30)
        except subprocess.TimeoutExpired:
            destination.kill()
            destination.wait()
        if guest_failed():
            fail('run %d (converge %s, %s MiB/s)' % (run, converge, bandwidth))
        ledger = source_log().count('LEDGER OK')
        if ledger > ledger_seen:
            ledger_seen, ledger_seen_at = ledger, time.monotonic()
        elif time.monotonic() - ledger_seen_at > 30:
            fail('run %d: no LEDGER OK for %.0f s: the guest stopped' % (run, time.monotonic() - ledger_seen_at))
        print('run %d: converge %s, %s MiB/s: %d LEDGER OK so far, %.0f s' %
              (run, converge, bandwidth, ledger, time.monotonic() - started), flush=True)
    print('cancel-stress: %d runs, no failure' % args.runs, flush=True)
    source.kill()
    source.wait()


if __name__ == '__main__':
    main()
