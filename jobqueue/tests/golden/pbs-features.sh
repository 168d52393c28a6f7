#!/usr/bin/env bash

#PBS -N rdask-worker
#PBS -q gpu
#PBS -l select=1:ncpus=16:mem=64GB:ngpus=2
#PBS -l walltime=36:00:00
#PBS -e /scratch/logs/
#PBS -o /scratch/logs/
#PBS -J 0-9
#PBS -j oe
module load gcc
export OMP_NUM_THREADS=1
export GREETING='it'"'"'s $HOME'
for i in $(seq 4); do /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 4 --death-timeout 120 --local-directory '/tmp/rdask dir' --lifetime 55m --interface ib0 --lifetime 129300 --lifetime-stagger 300 & done
wait
echo done
date
