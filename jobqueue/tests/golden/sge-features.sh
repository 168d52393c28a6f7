#!/usr/bin/env bash

#$ -N rdask-worker
#$ -q gpu
#$ -P proj42
#$ -l h_vmem=4G
#$ -l h_rt=36:00:00
#$ -e /scratch/logs/
#$ -o /scratch/logs/
#$ -l gpu=2
#$ -t 1-10
#$ -cwd
#$ -j y
#$ -pe smp 16
module load gcc
export OMP_NUM_THREADS=1
export GREETING='it'"'"'s $HOME'
for i in $(seq 4); do /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 4 --death-timeout 120 --local-directory '/tmp/rdask dir' --lifetime 55m --interface ib0 --lifetime 129300 --lifetime-stagger 300 & done
wait
echo done
date
