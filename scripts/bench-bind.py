#!/usr/bin/env python3
"""Bind addresses and thawd's transfer routes, measured (issue 21, items 3 and 6).

A thawd in a temporary home (its Unix socket), the default guest with one forward:
  1. pooled restore -> ready (the report's ready_ms), median of 10: a pool on
     127.0.0.1 with a restore without --bind, and a pool on 127.0.0.2 with a restore
     bound there;
  2. a restore bound to 127.0.0.2 while the pool is on 127.0.0.1 (it spawns; the pool
     keeps its clone), median of 5, against a spawned restore on 127.0.0.1;
  3. `thaw export` through thawd (THAW_HOST=unix://, the file streamed to the client)
     against the same in-process, and `thaw import` through thawd, median of 3;
  4. `thaw up` through thawd: the cold boot into the cache, then two restores from it.

Needs QEMU and the default guest. Uses target/debug binaries unless THAW_BIN says:
  cargo build -p thaw-daemon -p thaw-cli && python3 scripts/bench-bind.py
"""
import json, os, subprocess, sys, time, statistics, tempfile, signal
T=os.environ.get('THAW_BIN', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'target', 'debug'))
home=tempfile.mkdtemp(prefix='bindbench-')
env=dict(os.environ, THAW_HOME=home)
sock=os.path.join(home,'thawd.sock')
d=subprocess.Popen([T+'/thawd'],env=env,stdout=subprocess.DEVNULL,stderr=open(home+'.log','w'))
while not os.path.exists(sock): time.sleep(0.05)
def api(method,path,body=None):
    a=['curl','-s','--unix-socket',sock,'-X',method,'http://x'+path]
    if body is not None: a+=['-H','content-type: application/json','-d',json.dumps(body)]
    return json.loads(subprocess.run(a,capture_output=True,text=True).stdout)
def wait_pool():
    while True:
        p=[x for x in api('GET','/v1/pools') if x['tag']=='base']
        if p and p[0]['ready']>=1: return
        time.sleep(0.1)
try:
    api('POST','/v1/vms',{'name':'web','ports':[{'host':0,'guest':8080}]})
    api('POST','/v1/vms/web/snapshot',{'tag':'base','stop':True})
    api('PUT','/v1/snapshots/base/pool',{'size':1,'mode':'running'})
    pooled=[];far=[];near_spawn=[]
    for i in range(10):
        wait_pool(); time.sleep(0.5)
        r=api('POST','/v1/snapshots/base/restore',{'name':f'p{i}'})[0]
        assert r['breakdown']['source']=='pool', r
        pooled.append(r['ready_ms']); api('DELETE',f'/v1/vms/p{i}')
    api('PUT','/v1/snapshots/base/pool',{'size':1,'mode':'running','bind':'127.0.0.2'})
    pooled2=[]
    for i in range(10):
        wait_pool(); time.sleep(0.5)
        r=api('POST','/v1/snapshots/base/restore',{'name':f'q{i}','bind':'127.0.0.2'})[0]
        assert r['breakdown']['source']=='pool' and r['bind']=='127.0.0.2', r
        pooled2.append(r['ready_ms']); api('DELETE',f'/v1/vms/q{i}')
    print('pooled restore from a pool bound to 127.0.0.2, ready_ms median of 10:', round(statistics.median(pooled2),2), 'min', round(min(pooled2),2),'max',round(max(pooled2),2))
    api('PUT','/v1/snapshots/base/pool',{'size':1,'mode':'running'})
    for i in range(5):
        wait_pool(); time.sleep(0.5)
        r=api('POST','/v1/snapshots/base/restore',{'name':f'f{i}','bind':'127.0.0.2'})[0]
        assert r['breakdown']['source']=='spawn' and r['bind']=='127.0.0.2', r
        far.append(r['ready_ms']); api('DELETE',f'/v1/vms/f{i}')
    api('PUT','/v1/snapshots/base/pool',{'size':0,'mode':'running'})
    time.sleep(1)
    for i in range(5):
        r=api('POST','/v1/snapshots/base/restore',{'name':f'n{i}'})[0]
        assert r['breakdown']['source']=='spawn', r
        near_spawn.append(r['ready_ms']); api('DELETE',f'/v1/vms/n{i}')
    print('pooled restore (127.0.0.1), ready_ms median of 10:', round(statistics.median(pooled),2), 'min', round(min(pooled),2),'max',round(max(pooled),2))
    print('restore --bind 127.0.0.2 (spawn, pool left alone), median of 5:', round(statistics.median(far),1), 'min', round(min(far),1),'max',round(max(far),1))
    print('restore 127.0.0.1 without a pool (spawn), median of 5:', round(statistics.median(near_spawn),1), 'min', round(min(near_spawn),1),'max',round(max(near_spawn),1))
    # export / import through the daemon (THAW_HOST=unix://) vs in-process
    cli=dict(os.environ, THAW_HOME=tempfile.mkdtemp(prefix='bindcli-'), THAW_HOST='unix://'+sock)
    out=tempfile.mkdtemp(prefix='bindexp-')
    ex=[];im=[]
    for i in range(3):
        f=os.path.join(out,f'b{i}.thaw')
        t=time.time(); subprocess.run([T+'/thaw','export','base',f,'--json'],env=cli,check=True,capture_output=True); ex.append(time.time()-t)
    size=os.path.getsize(f)
    loc=[]
    for i in range(3):
        f2=os.path.join(out,f'l{i}.thaw')
        t=time.time(); subprocess.run([T+'/thaw','export','base',f2,'--json'],env=dict(env,THAW_NO_DAEMON='1'),check=True,capture_output=True); loc.append(time.time()-t)
    for i in range(3):
        api('DELETE','/v1/snapshots/base')
        t=time.time(); subprocess.run([T+'/thaw','import',f,'--json'],env=cli,check=True,capture_output=True); im.append(time.time()-t)
    print(f'export file {size/1048576:.1f} MiB; thaw export through thawd (unix://) median of 3: {statistics.median(ex)*1000:.0f} ms; in-process: {statistics.median(loc)*1000:.0f} ms; thaw import through thawd median of 3: {statistics.median(im)*1000:.0f} ms')
    # up through the daemon
    ups=[]
    for i in range(3):
        t=time.time(); r=json.loads(subprocess.run([T+'/thaw','up',f'u{i}','--memory','128','--json'],env=cli,check=True,capture_output=True,text=True).stdout); ups.append((r['path'],round((time.time()-t)*1000),r['ready_ms']))
        api('DELETE',f'/v1/vms/u{i}')
    print('thaw up through thawd (path, CLI wall ms, report ready_ms):', ups)
finally:
    d.send_signal(signal.SIGTERM); d.wait()
    subprocess.run([T+'/thaw','stop','--all'],env=dict(env,THAW_NO_DAEMON='1'),capture_output=True)
    subprocess.run(['rm','-rf',home])
