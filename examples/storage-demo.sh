#!/usr/bin/env bash
# The storage section end to end, through `pvc serve` (the README's first command, with its local
# node agent on libvirt's test driver) against a throwaway lab Ceph (scripts/ceph-lab, which needs
# Debian's ceph-mon ceph-mgr ceph-osd ceph-common and root): pool, volume, resize, snapshot, rename,
# lists, a file-backed OSD out and in, then everything removed; `ceph`/`rbd` show the same. Each
# request is printed with its time and answer. Ports: the lab's monitor 23310, pvc serve 7399.
set -uo pipefail
cd "$(dirname "$0")/.."
D=$(mktemp -d /tmp/pvc-storage-demo.XXXXXX)

export CEPH_LAB_MON_PORT=23310
scripts/ceph-lab start $D/ceph >/dev/null || exit 1
trap '[ -n "${SERVE:-}" ] && { kill $SERVE; wait $SERVE; } 2>/dev/null; scripts/ceph-lab stop $D/ceph >/dev/null; rm -rf $D' EXIT
cp examples/test-node.xml $D/node.xml
cat > $D/pvc.yaml <<YAML
pvc:
  debug: false
  coordinators: []
  api: {listen_address: 127.0.0.1, listen_port: 7399, authentication: {enabled: false}, ssl: {enabled: false}}
  store: {path: $D/pvc.sqlite}
  ceph: {config: $D/ceph/ceph.conf, figures_interval: 2}
  node: {name: hv1, libvirt_uri: "test:$D/node.xml"}
YAML
PVC_CONFIG_FILE=$D/pvc.yaml scripts/serve > $D/serve.log 2>&1 &
SERVE=$!
U=http://127.0.0.1:7399/api/v1
for i in $(seq 100); do curl -sf $U/node >/dev/null && break; sleep 0.2; done
eval "$(scripts/ceph-lab env $D/ceph)"
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
t() { local s=$(date +%s%N); out=$(curl -s -w ' [%{http_code}]' "$@"); echo "$(( ($(date +%s%N)-s)/1000000 )) ms: $*"; echo "   -> $out"; }
t -X POST -d pool=demo -d pgs=8 $U/storage/ceph/pool
t -X POST -d pool=demo -d volume=disk0 -d size=1G $U/storage/ceph/volume
t -X PUT -d size=2G $U/storage/ceph/volume/demo/disk0
t -X POST -d pool=demo -d volume=disk0 -d snapshot=snap1 $U/storage/ceph/volume/snapshot
t -X PUT -d name=disk1 $U/storage/ceph/volume/demo/disk0
t $U/storage/ceph/pool
t $U/storage/ceph/volume
t "$U/storage/ceph/volume/snapshot?pool=demo"
echo "rbd ls -l demo:"; rbd ls -l demo; echo "rbd snap ls demo/disk1:"; rbd snap ls demo/disk1
t -X POST -d node=hv1 -d device=$D/osd.img -d weight=0.001 $U/storage/ceph/osd
t $U/storage/ceph/osd
ID=$(curl -s $U/storage/ceph/osd | python3 -c 'import json,sys; print(max(o["id"] for o in json.load(sys.stdin)))')
t -X POST -d state=out $U/storage/ceph/osd/$ID/state
echo "ceph osd dump (osd.$ID):"; ceph osd dump | grep "^osd.$ID "
t -X POST -d state=in $U/storage/ceph/osd/$ID/state
echo "ceph osd dump (osd.$ID):"; ceph osd dump | grep "^osd.$ID "
t -X DELETE "$U/storage/ceph/volume/snapshot/demo/disk1/snap1"
t -X DELETE $U/storage/ceph/volume/demo/disk1
t -X DELETE "$U/storage/ceph/pool/demo?yes_i_really_mean_it=1"
t -X DELETE "$U/storage/ceph/osd/$ID?yes_i_really_mean_it=1"
t $U/storage/ceph/osd
t $U/storage/ceph/pool
echo "ceph osd pool ls:"; ceph osd pool ls; echo "ceph osd ls:"; ceph osd ls
t $U/storage/ceph | head -c 600; echo
