#!/usr/bin/env bash

#BSUB -J "rdask-worker[1-10]"
#BSUB -e /scratch/logs/rdask-worker-%J_%I.err
#BSUB -o /scratch/logs/rdask-worker-%J_%I.out
#BSUB -q gpu
#BSUB -P "proj42"
#BSUB -n 16
#BSUB -R "span[hosts=1]"
#BSUB -M 68719477
#BSUB -W 36:00
#BSUB -gpu "num=2"
#BSUB -R "select[mem>4000]"
module load gcc
export OMP_NUM_THREADS=1
export GREETING='it'"'"'s $HOME'
for i in $(seq 4); do /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 4 --death-timeout 120 --local-directory '/tmp/rdask dir' --lifetime 55m --interface ib0 --lifetime 129300 --lifetime-stagger 300 & done
wait
echo done
date
